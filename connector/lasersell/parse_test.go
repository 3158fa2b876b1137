package lasersell

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/jetbridge/connector/subjects"
)

// FuzzParseRoute checks the hand-written walker against encoding/json: the
// same frames are malformed, the same routing fields are read (escaped and
// duplicate keys included), and everything built from them for NATS is safe:
// subject tokens are valid and bounded, Nats-Msg-Ids are empty or clean.
// Seeds: testdata/fuzz/FuzzParseRoute.
func FuzzParseRoute(f *testing.F) {
	for _, seed := range []string{
		`{"type":"pnl_update","position_id":12,"profit_units":-1}`,
		` { "type" : "exit_signal_with_tx" , "wallet_pubkey":"W\u00e9","session_id":"7","level_index":null} `,
		`{"nested":{"type":"x","a":[1,{"b":"}"}]},"type":"outer","position_id":"5"}`,
		`{"type":"a","type":"b"}`, `{"t\u0079pe":"escaped_key"}`,
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
		typ := jsonString(fields["type"])
		if (typ == "") != (why != "") || r.Type != typ {
			t.Fatalf("%q: type %q (malformed %q), encoding/json reads %q", data, r.Type, why, typ)
		}
		for name, got := range map[string]string{
			"wallet_pubkey": r.WalletPubkey, "mint": r.Mint, "token_account": r.TokenAccount,
		} {
			if want := jsonString(fields[name]); got != want {
				t.Fatalf("%q: %s %q, encoding/json reads %q", data, name, got, want)
			}
		}
		for name, got := range map[string]string{
			"position_id": r.PositionID, "slot": r.Slot, "session_id": r.SessionID,
			"triggered_at_ms": r.TriggeredAtMS, "level_index": r.LevelIndex, "opened_at_ms": r.OpenedAtMS,
		} {
			if want := jsonAtom(fields[name]); got != want {
				t.Fatalf("%q: %s %q, want %q", data, name, got, want)
			}
		}
		if why != "" {
			return
		}
		// What handleFrame builds from the fields.
		for _, subject := range []string{
			subjects.LaserSellExit(session, r.WalletPubkey), subjects.LaserSellPnL(session, r.PositionID),
			subjects.LaserSellEvent(session, r.Type, eventKey(&r)),
		} {
			toks := strings.Split(subject, ".")
			for _, tok := range toks[2:] {
				if !subjects.ValidToken(tok) || len(tok) > subjects.MaxTokenLen {
					t.Fatalf("%q: subject %q has an unsafe token %q", data, subject, tok)
				}
			}
		}
		for _, id := range []string{
			msgID(session, "exit", r.SessionID, r.PositionID, r.TriggeredAtMS, r.LevelIndex),
			msgID(session, "balance", r.WalletPubkey, r.Mint, r.Slot, atom(r.Tokens)),
		} {
			if id != "" && (len(id) > maxMsgIDLen || strings.ContainsAny(id, " \t\r\n") || !safeHeader(id)) {
				t.Fatalf("%q: Nats-Msg-Id %q", data, id)
			}
			if id != "" && strings.Count(id, ":") != 5 {
				t.Fatalf("%q: Nats-Msg-Id %q: an upstream part contains the separator", data, id)
			}
		}
	})
}

// jsonString is raw decoded as a string, "" for any other JSON value.
func jsonString(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

// jsonAtom is what an id field becomes: a number as written, or a string
// that can travel in a header.
func jsonAtom(raw json.RawMessage) string {
	var n json.Number
	var s string
	switch {
	case len(raw) > 0 && raw[0] != '"' && json.Unmarshal(raw, &n) == nil:
		return n.String()
	case len(raw) > 0 && json.Unmarshal(raw, &s) == nil && safeHeader(s):
		return s
	}
	return ""
}
