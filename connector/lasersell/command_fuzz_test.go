package lasersell

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/jetbridge/connector/connector"
)

var fuzzCommands = []string{
	typeConfigure, typeUpdateStrategy, typeUpdateWallets, typeUpdateWatchWallets,
	typeUpdatePositionStrategy, typeClosePosition, typeRequestExitSignal, typePing,
}

// FuzzLaserSellCommand runs every command's validation and frame encoding
// (planFrame) without network, against no configure and against a current
// one with limits. Properties: no panic; a refusal is a *connector.CommandError;
// an accepted command encodes to one line of valid UTF-8 JSON whose "type" is
// the command.
func FuzzLaserSellCommand(f *testing.F) {
	for _, seed := range []struct {
		cmd  uint8
		body string
	}{
		{0, `{"wallet_pubkeys":["7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"],"strategy":{"target_profit_pct":50,"stop_loss_pct":20},"send_mode":"rpc","watch_wallets":[{"pubkey":"w1","auto_buy":{"wallet_pubkey":"a","amount_quote_units":1}}]}`},
		{0, `{"wallet_pubkey":"a\nb","strategy":{"trailing_stop_pct":1,"take_profit_levels":[{"profit_pct":1,"sell_pct":50,"trailing_stop_pct":0}]}}`},
		{1, `{"strategy":{"target_profit_pct":0,"stop_loss_pct":0,"trailing_stop_pct":0},"deadline_timeout_sec":30}`},
		{2, `{"wallet_pubkeys":["a","A"]}`},
		{3, `{"watch_wallets":[]}`},
		{4, `{"position_id":7,"strategy":{"stop_loss_pct":5}}`},
		{5, `{"token_account":"x\u2028y"}`},
		{6, `{"position_id":1,"slippage_bps":65535}`},
		{7, `{"client_time_ms":18446744073709551615}`},
	} {
		f.Add(seed.cmd, []byte(seed.body), false)
	}
	current := &Configure{WalletPubkeys: []string{"w"}, Strategy: Strategy{TargetProfitPct: 1}}
	lim := Limits{MaxWalletsPerSession: 3, MaxWatchWalletsPerSession: 2}
	f.Fuzz(func(t *testing.T, cmd uint8, body []byte, configured bool) {
		name := fuzzCommands[int(cmd)%len(fuzzCommands)]
		cur := (*Configure)(nil)
		if configured {
			c := *current
			cur = &c
		}
		frame, err := planFrame(name, body, cur, lim)
		if err != nil {
			var ce *connector.CommandError
			if !errors.As(err, &ce) {
				t.Fatalf("%s: refusal without a code: %v", name, err)
			}
			return
		}
		if frame == nil { // ping without client_time_ms: stamped when sent
			return
		}
		if !json.Valid(frame) || !utf8.Valid(frame) || bytes.ContainsAny(frame, "\r\n") {
			t.Fatalf("%s: frame is not one line of valid JSON: %q", name, frame)
		}
		var typ struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(frame, &typ) != nil || typ.Type != name {
			t.Fatalf("%s: frame type %q", name, typ.Type)
		}
	})
}
