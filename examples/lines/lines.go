// Package lines is the example kind: this is how a kind is built.
//
// A lines session connects to a TCP address and publishes each line it reads,
// verbatim, as one high-lane event: a JSON object on lines.<session>.line.<type>
// (its "type" field), anything else on lines.<session>.malformed. It reconnects
// with a backoff, reports its status, and serves one command, send, which
// writes a line upstream. Everything else (lanes, publishing, acks, headers,
// command services, audit, KV, metrics) is the runtime's. Three touch points:
//
//  1. this package: a Config (connector.KindConfig), Kind() and the Source;
//  2. subjects/lines.go: the kind's name, its streams and subject builders;
//  3. lines.Kind() in main's kind list, builtinKinds in cmd/connector/sources.go
//     (not done for this example: lines_test.go walks that path instead).
package lines

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// Kind is the lines kind as one unit: main lists it among its kinds.
func Kind() connector.Kind {
	return connector.Kind{
		Subjects: subjects.Lines(),
		Title:    "Line source (example)",
		Enable:   "LINES_ADDRS",
		Config:   func() connector.KindConfig { return &Config{} },
	}
}

// Config is the kind's configuration: envconfig reads the variables its tags
// name in full (so EnvPrefix is ""); its default tags are the defaults.
type Config struct {
	Addrs      string        `envconfig:"LINES_ADDRS" desc:"sessions as name=host:port, comma-separated, e.g. a=10.0.0.5:7000,b=10.0.0.6:7000"`
	Backoff    time.Duration `envconfig:"LINES_BACKOFF" default:"250ms" desc:"first reconnect delay; doubles per failed attempt"`
	BackoffMax time.Duration `envconfig:"LINES_BACKOFF_MAX" default:"5s" desc:"reconnect delay cap"`
}

func (c *Config) EnvPrefix() string { return "" }
func (c *Config) Configured() bool  { return c.Addrs != "" }

// Sessions declares one session per name=host:port; errors name the variable.
func (c *Config) Sessions() ([]connector.Session, error) {
	if c.Backoff <= 0 || c.BackoffMax < c.Backoff {
		return nil, errors.New("LINES_BACKOFF must be positive and at most LINES_BACKOFF_MAX")
	}
	var out []connector.Session
	for _, pair := range strings.Split(c.Addrs, ",") {
		name, addr, _ := strings.Cut(strings.TrimSpace(pair), "=")
		if _, _, err := net.SplitHostPort(addr); err != nil || !subjects.ValidToken(name) {
			return nil, fmt.Errorf("LINES_ADDRS: %q is not name=host:port", pair)
		}
		bo := connector.Backoff{Base: c.Backoff, Max: c.BackoffMax}
		out = append(out, connector.Session{Kind: subjects.KindLines, Name: name,
			Open: func(h *connector.Host) (connector.Source, error) { return &source{host: h, addr: addr, bo: bo}, nil }})
	}
	return out, nil
}

// source is one session. The runtime calls Run once and Handle per command.
type source struct {
	host *connector.Host
	addr string
	bo   connector.Backoff // Run's alone

	mu   sync.Mutex
	conn net.Conn // the live connection, nil while disconnected
}

func (s *source) Commands() []string { return []string{"send"} }

// Run connects, reads until the connection ends and reconnects after the
// backoff, until the runtime stops the session (ctx).
func (s *source) Run(ctx context.Context) error {
	defer s.host.Report(connector.Status{State: connector.StateStopped})
	for failures := 0; ctx.Err() == nil; failures++ {
		s.host.Report(connector.Status{State: connector.StateConnecting, Attempt: failures})
		code := connector.ReasonDial
		conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", s.addr)
		if err == nil {
			up := time.Now()
			code, err = s.read(ctx, conn)
			if connector.Healthy(up, time.Second) {
				s.bo.Reset() // it worked for a while: start the schedule over
				failures = 0 // Attempt counts consecutive failures
			}
		}
		if ctx.Err() != nil {
			break
		}
		wait := s.bo.Next()
		s.host.Metrics().Reconnects.WithLabelValues(code).Inc()
		s.host.Report(connector.Status{State: connector.StateReconnecting, Reason: err.Error(),
			Attempt: failures + 1, BackoffMS: wait.Milliseconds(), Detail: map[string]string{"reason_code": code}})
		connector.Sleep(ctx, wait)
	}
	return nil
}

// read publishes every line of conn until it ends (or ctx does), and says why
// it ended: a connector.Reason* code and the error.
func (s *source) read(ctx context.Context, conn net.Conn) (string, error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // ends a blocked read
	s.setConn(conn)
	s.host.Metrics().Connected.Set(1)
	defer func() { stop(); s.setConn(nil); conn.Close(); s.host.Metrics().Connected.Set(0) }()
	s.host.Report(connector.Status{State: connector.StateConnected})
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, 64<<10) // a longer line is a protocol error (bufio.ErrTooLong)
	for sc.Scan() {
		// A copy: the runtime owns the payload, the scanner reuses its buffer.
		ev := connector.Event{Lane: connector.LaneHigh, Payload: bytes.Clone(sc.Bytes())}
		var obj map[string]any
		if json.Unmarshal(ev.Payload, &obj) == nil && obj != nil {
			typ, _ := obj["type"].(string)
			ev.Type = subjects.Token(typ) // upstream text: one safe token
			ev.Subject = subjects.LinesEvent(s.host.Name(), ev.Type)
		} else {
			s.host.Metrics().Malformed.Inc()
			ev.Type, ev.Subject = "malformed", subjects.Malformed(subjects.KindLines, s.host.Name())
		}
		// High lane: Emit waits while the lane is full (backpressure).
		if err := s.host.Emit(ctx, ev); err != nil {
			return connector.ReasonStopped, err
		}
	}
	if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
		return connector.ReasonProtocol, err
	} else if err != nil {
		return connector.ReasonClosedByPeer, err
	}
	return connector.ReasonClosedByPeer, errors.New("closed by the server")
}

func (s *source) setConn(c net.Conn) { s.mu.Lock(); s.conn = c; s.mu.Unlock() }

// Handle serves send: {"line":"..."} is written upstream with its newline.
// Bad requests are refused before anything reaches the socket.
func (s *source) Handle(ctx context.Context, cmd connector.Command) (any, error) {
	var req struct {
		Line string `json:"line"`
	}
	if err := connector.DecodeStrict(cmd.Body, &req); err != nil {
		return nil, err // invalid_json
	}
	if req.Line == "" || strings.ContainsAny(req.Line, "\r\n") {
		return nil, connector.Refuse("invalid_line", "line must be one non-empty line")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil, connector.Refuse("not_connected", "%s is not connected", s.addr)
	}
	deadline, _ := ctx.Deadline() // the runtime's command timeout
	_ = s.conn.SetWriteDeadline(deadline)
	if _, err := s.conn.Write([]byte(req.Line + "\n")); err != nil {
		return nil, connector.Refuse("not_connected", "write to %s: %v", s.addr, err)
	}
	return map[string]int{"bytes": len(req.Line) + 1}, nil
}
