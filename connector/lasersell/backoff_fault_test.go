package lasersell

// The reconnect backoff under repeated drops: a session that was established
// (hello_ok, configure written) and streamed resets it, so frequent drops
// reconnect at the first delay every time; sessions that end before that, or
// that end at once after hello_ok, keep doubling it.

import (
	"slices"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/connector/lasersell/sim"
)

// reconnectRound is one reconnecting status: its reason code and backoff,
// and whether the session that ended had reached hello_ok (a connected status
// since the previous reconnecting one).
type reconnectRound struct {
	Code      string
	BackoffMS int64
	Hello     bool
	At        time.Time
}

// rounds returns the reconnecting statuses stored so far, in order.
func (r *faultRig) rounds() []reconnectRound {
	r.t.Helper()
	var out []reconnectRound
	hello := false
	for _, st := range r.timeline() {
		switch st.State {
		case connector.StateConnected:
			hello = true
		case connector.StateReconnecting:
			out = append(out, reconnectRound{Code: st.Code, BackoffMS: st.BackoffMS, Hello: hello, At: st.At})
			hello = false
		}
	}
	return out
}

// waitRounds waits until at least n reconnecting statuses are stored.
func (r *faultRig) waitRounds(n int, within time.Duration) []reconnectRound {
	r.t.Helper()
	var rounds []reconnectRound
	connectortest.Eventually(r.t, within, "reconnects", func() bool {
		rounds = r.rounds()
		return len(rounds) >= n
	})
	return rounds
}

func backoffsOf(rounds []reconnectRound) []int64 {
	out := make([]int64, len(rounds))
	for i, rd := range rounds {
		out[i] = rd.BackoffMS
	}
	return out
}

// A server that drops every connection ~300 ms after it opened, while the
// session streams (its open position is re-announced after each configure):
// every session was established and answered, so every reconnect waits the
// first delay (100 ms), never the doubled ones. LASERSELL_HEALTHY_AFTER (5 s)
// is far longer than any of these sessions: establishing and streaming is
// what resets the backoff.
func TestFaultFrequentDropsKeepBaseBackoff(t *testing.T) {
	r := startFaultRig(t, sim.Config{DropEvery: 300 * time.Millisecond}, func(c *Config) {
		c.BackoffBase = 100 * time.Millisecond
		c.BackoffMax = 2 * time.Second
		c.HealthyAfter = 5 * time.Second
	})
	r.sim.OpenPosition(walletA, mintA, 1000)
	const drops = 8
	rounds := r.waitRounds(drops, 4*wait)
	base := r.src.cfg.BackoffBase.Milliseconds()
	established := 0
	for _, rd := range rounds {
		if rd.Code != connector.ReasonClosedByPeer {
			t.Fatalf("unexpected reconnect reason %q: %+v", rd.Code, rounds)
		}
		if !rd.Hello {
			// Cut before hello_ok (a loaded machine): doubling is right then.
			continue
		}
		established++
		if rd.BackoffMS != base {
			t.Fatalf("a reconnect after an established session waited %d ms, want the base %d ms; backoffs %v",
				rd.BackoffMS, base, backoffsOf(rounds))
		}
	}
	if established < drops-2 {
		t.Fatalf("only %d of %d sessions reached hello_ok: %+v", established, len(rounds), rounds)
	}
	span := rounds[len(rounds)-1].At.Sub(rounds[0].At)
	t.Logf("measured: %d drops, backoffs %v ms, one reconnect every %s on average",
		len(rounds), backoffsOf(rounds), span/time.Duration(len(rounds)-1))
}

// A server that closes every connection before hello_ok (150 ms after it
// opened, hello withheld): no session is established, the backoff doubles up
// to LASERSELL_BACKOFF_MAX.
func TestFaultClosedBeforeHelloBacksOff(t *testing.T) {
	r := startFaultRig(t, sim.Config{WithholdHello: true, DropEvery: 150 * time.Millisecond}, func(c *Config) {
		c.BackoffBase = 50 * time.Millisecond
		c.BackoffMax = 400 * time.Millisecond
		c.HealthyAfter = 10 * time.Millisecond
	})
	rounds := r.waitRounds(6, 4*wait)
	want := []int64{50, 100, 200, 400, 400, 400}
	got := backoffsOf(rounds)[:len(want)]
	for _, rd := range rounds {
		if rd.Hello || rd.Code != connector.ReasonClosedByPeer {
			t.Fatalf("unexpected round: %+v", rounds)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("backoffs %v ms, want %v", got, want)
	}
	t.Logf("measured: closed before hello_ok, backoffs %v ms", got)
}

// A server that answers hello_ok and closes at once (the hot loop of an
// accepted-then-dropped session, for example a refused configure): the
// sessions were established but never streamed nor lived
// LASERSELL_HEALTHY_AFTER, so the backoff keeps doubling; it resets only once
// a session streams again.
func TestFaultHelloThenCloseStillBacksOff(t *testing.T) {
	r := startFaultRig(t, sim.Config{DropAfterFrames: 1}, func(c *Config) {
		c.BackoffBase = 50 * time.Millisecond
		c.BackoffMax = 400 * time.Millisecond
		c.HealthyAfter = 5 * time.Second
	})
	rounds := r.waitRounds(6, 4*wait)
	want := []int64{50, 100, 200, 400, 400, 400}
	got := backoffsOf(rounds)[:len(want)]
	hello := 0
	for _, rd := range rounds {
		if rd.Code != connector.ReasonClosedByPeer {
			t.Fatalf("unexpected round: %+v", rounds)
		}
		if rd.Hello {
			hello++
		}
	}
	if hello < len(want)-1 {
		t.Fatalf("only %d of %d sessions reached hello_ok: %+v", hello, len(rounds), rounds)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("backoffs %v ms, want %v", got, want)
	}
	t.Logf("measured: hello_ok then close, backoffs %v ms", got)
}
