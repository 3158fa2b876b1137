package sim

import (
	"strings"
	"testing"
	"time"
)

func expectTimeout(t *testing.T, c *client, within time.Duration) msg {
	t.Helper()
	seen := c.expectClosed(within)
	for i, m := range seen {
		if m.err() == ErrSessionTimeout {
			if i != len(seen)-1 {
				t.Fatalf("lines after session_timeout: %v", seen[i+1:])
			}
			return m
		}
	}
	t.Fatalf("closed without session_timeout (saw %v)", seen)
	return msg{}
}

func TestWatchdogIdle(t *testing.T) {
	t.Parallel()
	s, addr := startSim(t, func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })
	c := dial(t, addr)
	start := time.Now()
	expectTimeout(t, c, 2*time.Second)
	if el := time.Since(start); el < 180*time.Millisecond {
		t.Fatalf("closed too early: %v", el)
	}

	// Successful commands keep an unarmed session alive; errors and garbage do not.
	c = dial(t, addr)
	for i := 0; i < 4; i++ {
		c.handshake()
		time.Sleep(80 * time.Millisecond)
	}
	start = time.Now().Add(-80 * time.Millisecond) // the last successful command
	go spam(c, "garbage", time.Second)
	m := expectTimeout(t, c, 2*time.Second)
	if el := time.Since(start); el > 450*time.Millisecond {
		t.Fatalf("garbage extended the session: closed %v after the last command", el)
	}
	if !strings.Contains(m.m["message"].(string), "no meaningful command") {
		t.Fatal(m)
	}
	waitFor(t, s, "sessions gone", func() bool { return s.Active() == 0 })
}

func TestWatchdogArmedStrict(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.ArmedTimeout = 200 * time.Millisecond })
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 10)
	start := time.Now()
	expectTimeout(t, c, 2*time.Second)
	if el := time.Since(start); el < 180*time.Millisecond || el > 1500*time.Millisecond {
		t.Fatalf("armed timeout after %v", el)
	}

	// A successful CONTROL refreshes the activity timestamp; a failing one does not.
	c = dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 10)
	for i := 0; i < 8; i++ {
		c.send(`{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/motor_on","body":{}}}`)
		time.Sleep(60 * time.Millisecond)
	}
	start = time.Now().Add(-60 * time.Millisecond)
	go spam(c, `{"cmd":"CONTROL","payload":{"method":"POST","url":"/nope","body":{}}}`, time.Second)
	expectTimeout(t, c, 2*time.Second)
	if el := time.Since(start); el > 450*time.Millisecond {
		t.Fatalf("failing CONTROL extended the session: closed %v after the last success", el)
	}
}

func TestWatchdogArmedStream(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) {
		c.Watchdog = WatchdogStream
		c.ArmedTimeout = 150 * time.Millisecond
		c.IdleTimeout = 150 * time.Millisecond
	})
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 10)
	// A silent client that keeps reading is not cut off under the stream rule.
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		c.expectData()
	}
	// Stopping the MONITOR disarms; the idle limit applies again.
	c.cmd("STOP", map[string]any{"target": "monitor"})
	c.expectType("stop_ack")
	expectTimeout(t, c, 2*time.Second)
}

func TestWatchdogStreamStall(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) {
		c.Watchdog = WatchdogStream
		c.ArmedTimeout = 150 * time.Millisecond
		c.Faults.StallEvery = 100 * time.Millisecond
		c.Faults.StallFor = time.Second
	})
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 10)
	m := expectTimeout(t, c, 2*time.Second)
	if !strings.Contains(m.m["message"].(string), "stalled") {
		t.Fatal(m)
	}
}

func TestWatchdogDisabled(t *testing.T) {
	t.Parallel()
	_, addr := startSim(t, func(c *Config) { c.ArmedTimeout = -1; c.IdleTimeout = -1 })
	c := dial(t, addr)
	c.handshake()
	c.monitor("/api/health", 10)
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		c.expectData()
	}
}

// spam writes line every 20ms for d, ignoring errors (the server may close meanwhile).
func spam(c *client, line string, d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
			return
		}
	}
}

// Harmless valid commands are keepalives: re-sending the active MONITOR (armed) and STOP control
// answered with nothing_to_stop (unarmed), as the connector does. Each phase outlasts the limit;
// keepalives come every 20 ms against a 300 ms limit, so a scheduling hiccup (-race, a loaded
// machine) cannot pass for a missing keepalive.
func TestWatchdogKeepaliveCommands(t *testing.T) {
	t.Parallel()
	const limit, every = 300 * time.Millisecond, 20 * time.Millisecond
	_, addr := startSim(t, func(c *Config) {
		c.ArmedTimeout = limit
		c.IdleTimeout = limit
	})
	c := dial(t, addr)
	c.handshake()
	for end := time.Now().Add(limit + 100*time.Millisecond); time.Now().Before(end); time.Sleep(every) {
		c.cmd("STOP", map[string]any{"target": "control"})
		c.expectError(ErrNothingToStop)
	}
	for end := time.Now().Add(limit + 100*time.Millisecond); time.Now().Before(end); time.Sleep(every) {
		c.monitor("/api/health", 20)
	}
	expectTimeout(t, c, 2*time.Second)
}
