package lasersell

import (
	"maps"
	"strconv"
	"strings"
	"testing"

	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// close_position and request_exit_signal for a position the connector does
// not track as open are refused with unknown_position, naming the id and how
// many positions are open, and nothing reaches the server; a tracked one
// (by id or token account) is forwarded, and once it closes it is refused.
func TestSelectorCommandsRefuseUnknownPositions(t *testing.T) {
	t.Parallel()
	s := startSim(t, sim.Config{})
	r := run(t, testConfig(s.URL()), "")
	r.waitConnected()
	waitFrame(t, s, 1, typeConfigure, nil)
	pos := s.OpenPosition(walletA, mintA, 1_000_000)
	connectortest.Eventually(t, wait, "position tracked", func() bool { return r.memPosition(pos).PositionID == pos })
	account := r.memPosition(pos).TokenAccount
	if account == "" {
		t.Fatal("the simulator's position_opened carried no token_account")
	}
	before := commandFrames(s)

	refused := func(cmd, body, names, open string) {
		t.Helper()
		rep := r.request(cmd, body)
		if rep.OK || rep.Error == nil || rep.Error.Code != CodeUnknownPosition {
			t.Fatalf("%s %s: want %s, got %v", cmd, body, CodeUnknownPosition, rep.Raw)
		}
		if !strings.Contains(rep.Error.Message, names) || !strings.Contains(rep.Error.Message, "tracks "+open+" of this session") {
			t.Fatalf("%s %s: message %q does not name %s and %q", cmd, body, rep.Error.Message, names, open)
		}
	}
	for _, cmd := range []string{typeClosePosition, typeRequestExitSignal} {
		refused(cmd, `{"position_id":42}`, "position 42", "1 open position")
		refused(cmd, `{"position_id":999999}`, "position 999999", "1 open position")
		refused(cmd, `{"token_account":"NoSuchTokenAccount1111111111111111111111111"}`, "NoSuchTokenAccount", "1 open position")
	}
	refused(typeRequestExitSignal, `{"position_id":42,"slippage_bps":300}`, "position 42", "1 open position")
	// Validation still comes first.
	if rep := r.request(typeClosePosition, `{"position_id":42,"token_account":"x"}`); rep.OK || rep.Error.Code != CodeInvalidPositionSelector {
		t.Fatalf("both selectors: %v", rep.Raw)
	}
	if after := commandFrames(s); !maps.Equal(after, before) {
		t.Fatalf("refused commands reached the server: before %v, after %v", before, after)
	}

	// Tracked positions are forwarded, by id and by token account.
	exits := func() uint64 {
		return r.env.Count(subjects.StreamLaserSellExit, "lasersell."+session+".exit."+walletA)
	}
	r.mustOK(typeRequestExitSignal, `{"position_id":`+strconv.FormatUint(pos, 10)+`,"slippage_bps":300}`)
	waitFrame(t, s, 1, typeRequestExitSignal, exitRequestFor(pos))
	r.mustOK(typeRequestExitSignal, `{"token_account":"`+account+`"}`)
	waitFrame(t, s, 1, typeRequestExitSignal, func(b map[string]any) bool { return b["token_account"] == account })
	if got := r.env.WaitCount(subjects.StreamLaserSellExit, "lasersell."+session+".exit."+walletA, 2, wait); got != 2 {
		t.Fatalf("exit signals after two accepted requests: %d, want 2", got)
	}
	r.mustOK(typeClosePosition, `{"position_id":`+strconv.FormatUint(pos, 10)+`}`)
	waitFrame(t, s, 1, typeClosePosition, exitRequestFor(pos))
	connectortest.Eventually(t, wait, "position_closed applied", func() bool { return r.memPosition(pos).PositionID == 0 })

	// Closed: refused like any unknown position, and nothing more is sent.
	sent := commandFrames(s)
	refused(typeClosePosition, `{"position_id":`+strconv.FormatUint(pos, 10)+`}`, "position "+strconv.FormatUint(pos, 10), "0 open positions")
	refused(typeRequestExitSignal, `{"token_account":"`+account+`"}`, account, "0 open positions")
	if after := commandFrames(s); !maps.Equal(after, sent) {
		t.Fatalf("commands for a closed position reached the server: before %v, after %v", sent, after)
	}
	if n := exits(); n != 2 {
		t.Fatalf("%d exit signals, want 2", n)
	}
}
