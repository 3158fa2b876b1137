package lasersell

import (
	"encoding/json"
	"testing"
)

// FuzzParseRoute checks the hand-written walker against encoding/json: the
// same frames are malformed, and the same routing fields are read.
func FuzzParseRoute(f *testing.F) {
	for _, seed := range []string{
		`{"type":"pnl_update","position_id":12,"profit_units":-1}`,
		` { "type" : "exit_signal_with_tx" , "wallet_pubkey":"W\u00e9","session_id":"7","level_index":null} `,
		`{"nested":{"type":"x","a":[1,{"b":"}"}]},"type":"outer","position_id":"5"}`,
		`{"type":"a","type":"b"}`,
		`{"type":17}`, `{}`, `[]`, `"s"`, `null`, `{"type":"x"`, `not json`, `{"type":"\"q\\"}`,
		`{"position_id":1e5,"slot":-0.5,"type":"t"}`, `{"type":"x","position_id":"a\nb"}`,
		"{\"type\":\"\xf2\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r route
		why := parseRoute(data, &r)
		var fields map[string]json.RawMessage
		err := json.Unmarshal(data, &fields)
		if err != nil || fields == nil {
			if why == "" {
				t.Fatalf("%q: accepted, but encoding/json says %v", data, err)
			}
			return
		}
		var typ string
		_ = json.Unmarshal(fields["type"], &typ)
		if (typ == "") != (why != "") || r.Type != typ {
			t.Fatalf("%q: type %q (malformed %q), encoding/json reads %q", data, r.Type, why, typ)
		}
		var wallet string
		_ = json.Unmarshal(fields["wallet_pubkey"], &wallet)
		if r.WalletPubkey != wallet {
			t.Fatalf("%q: wallet %q, encoding/json reads %q", data, r.WalletPubkey, wallet)
		}
		raw := fields["position_id"]
		want := ""
		var n json.Number
		var s string
		switch {
		case len(raw) > 0 && raw[0] != '"' && json.Unmarshal(raw, &n) == nil:
			want = n.String()
		case len(raw) > 0 && json.Unmarshal(raw, &s) == nil && safeHeader(s):
			want = s
		}
		if r.PositionID != want {
			t.Fatalf("%q: position_id %q, want %q", data, r.PositionID, want)
		}
	})
}
