package sim

import (
	"encoding/json"
	"testing"
	"time"
)

func TestFaultAckAfterData(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.Faults.AckAfterData = true })
	c := dial(t, addr)
	c.handshake()
	c.cmd("MONITOR", map[string]any{"method": "GET", "url": "/api/health", "period_ms": 1000})
	first, _ := c.next(2 * time.Second)
	second, _ := c.next(2 * time.Second)
	if !first.isData() || second.typ() != "monitor_ack" {
		t.Fatalf("want data then monitor_ack, got %s then %s", first, second)
	}
}

func TestFaultRejectHandshakeControlBusyStopFailed(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.Faults.RejectHandshake = true })
	c := dial(t, addr)
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	c.expectError(ErrHandshakeRejected)
	// Validation still comes first.
	c.send(`{"cmd":"HANDSHAKE","payload":{"major":3}}`)
	c.expectError(ErrVersionMismatch)

	_, addr = startSim(t, func(c *Config) { c.Faults.ControlBusy = true; c.Faults.StopFailed = true })
	c = dial(t, addr)
	c.handshake()
	c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/motor_on","body":{}}}`)
	c.expectError(ErrControlBusy)
	c.cmd("STOP", map[string]any{"target": "session"})
	c.expectError(ErrStopFailed)
	c.handshake() // still open
}

func TestFaultGarbage(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.Faults.GarbageEvery = 10 * time.Millisecond })
	c := dial(t, addr)
	c.handshake()
	var bad, objects int
	for bad < garbageKinds {
		m, err := c.next(2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.m == nil {
			bad++
		} else if m.typ() == "" && m.err() == "" {
			objects++ // the object that is no known message
		}
	}
	if objects == 0 {
		t.Fatal("no unknown-object garbage seen")
	}
	c.monitor("/api/health", 1000) // the session keeps working between garbage lines
	c.expectData()
}

func TestFaultDropAfter(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, func(c *Config) { c.Faults.DropAfter = 150 * time.Millisecond })
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 10)
	start := time.Now()
	for _, m := range c.expectClosed(2 * time.Second) {
		if !m.isData() {
			t.Fatalf("abrupt drop sent %s", m)
		}
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("dropped after %v", el)
	}
	waitFor(t, s, "session gone", func() bool { return s.Active() == 0 })
}

func TestFaultDropEveryLines(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.Faults.DropEveryLines = 25 })
	for round := 0; round < 2; round++ {
		c := dial(t, addr)
		c.handshake()
		c.monitor("/api/health", 2)
		n := 0
		for _, m := range c.expectClosed(2 * time.Second) {
			if m.isData() {
				n++
			}
		}
		// c.monitor consumed lines up to the ack only; the first data comes after it.
		if n != 25 {
			t.Fatalf("round %d: %d data lines before the drop, want 25", round, n)
		}
	}
}

func TestFaultStall(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) {
		c.Faults.StallEvery = 100 * time.Millisecond
		c.Faults.StallFor = 200 * time.Millisecond
	})
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 5)
	var last time.Time
	var maxGap time.Duration
	end := time.Now().Add(450 * time.Millisecond)
	for time.Now().Before(end) {
		c.expectData()
		if now := time.Now(); !last.IsZero() && now.Sub(last) > maxGap {
			maxGap = now.Sub(last)
		}
		last = time.Now()
	}
	if maxGap < 150*time.Millisecond || maxGap > 400*time.Millisecond {
		t.Fatalf("largest gap %v, want about 200ms", maxGap)
	}
}

func TestFaultMaxConns(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, func(c *Config) { c.MaxConns = 1 })
	a := dial(t, addr)
	a.handshake()
	b := dial(t, addr)
	seen := b.expectClosed(2 * time.Second)
	if len(seen) != 1 || seen[0].err() != ErrHandshakeRejected {
		t.Fatalf("refused connection got %v", seen)
	}
	a.handshake()
	if s.Connections() != 2 || s.Active() != 1 {
		t.Fatalf("connections %d active %d", s.Connections(), s.Active())
	}
	a.cmd("STOP", map[string]any{"target": "session"})
	a.expectClosed(2 * time.Second)
	waitFor(t, s, "slot free", func() bool { return s.Active() == 0 })
	dial(t, addr).handshake()
}

func TestEchoIDFieldIsCompact(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.EchoID = true })
	c := dial(t, addr)
	c.handshake()
	c.send(`{"cmd":"MONITOR","payload":{"method":"GET","url":"/api/health","period_ms":1000,"id":{ "a" : [1, 2] }}}`)
	c.expectType("monitor_ack")
	d := c.expectData()
	var v struct {
		ID json.RawMessage `json:"id"`
	}
	json.Unmarshal(d.raw, &v)
	if string(v.ID) != `{"a":[1,2]}` {
		t.Fatal(d)
	}
}
