// Package lines is the example kind: this is how a kind is built. Read it
// before writing a new one; it is the smallest complete source.
//
// A lines session connects to a TCP address and publishes every line it reads
// as one event on lines.<session>.line.<type> (stream LINES_EVENTS, high lane:
// never dropped), <type> being the line's "type" field. A line that is not a
// JSON object goes to lines.<session>.malformed. The session reconnects after
// a short backoff and reports connecting, connected, reconnecting and stopped.
// One command, lines.<session>.cmd.send {"line":"..."}, writes a line upstream.
//
// Everything else is the runtime's: lanes, publishing, acks and retries, dedup
// ids, headers, command services, size and rate limits, replies, the audit
// stream, status in KV, metrics. A kind has three touch points:
//
//  1. this package: a Config (connector.KindConfig), Kind() and the Source;
//  2. subjects/lines.go: the kind's name, its streams and subject builders;
//  3. one line in main's kind list, builtinKinds in cmd/connector/sources.go:
//     lines.Kind(). (This example is left out of it; lines_test.go walks the
//     same path.)
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

// Kind is the lines kind as one unit of the connector.
func Kind() connector.Kind {
	return connector.Kind{
		Subjects: subjects.Lines(),
		Title:    "Line source (example)",
		Config:   func() connector.KindConfig { return &Config{} },
	}
}

// Config is read by envconfig from the variables its tags name in full (so
// EnvPrefix is ""); default tags are the defaults (connector.Defaults).
type Config struct {
	Addrs   string        `envconfig:"LINES_ADDRS" desc:"sessions as name=host:port, comma-separated, e.g. a=10.0.0.5:7000,b=10.0.0.6:7000"`
	Backoff time.Duration `envconfig:"LINES_BACKOFF" default:"250ms" desc:"wait before reconnecting"`
}

func (c *Config) EnvPrefix() string { return "" }
func (c *Config) Configured() bool  { return c.Addrs != "" }

// Sessions declares one session per name=host:port; errors name the variable.
func (c *Config) Sessions() ([]connector.Session, error) {
	if c.Addrs == "" || c.Backoff <= 0 {
		return nil, errors.New("LINES_ADDRS must list name=host:port and LINES_BACKOFF be positive")
	}
	var out []connector.Session
	for _, pair := range strings.Split(c.Addrs, ",") {
		name, addr, _ := strings.Cut(strings.TrimSpace(pair), "=")
		if _, _, err := net.SplitHostPort(addr); err != nil || !subjects.ValidToken(name) {
			return nil, fmt.Errorf("LINES_ADDRS: %q is not name=host:port", pair)
		}
		backoff := c.Backoff
		out = append(out, connector.Session{Kind: subjects.KindLines, Name: name,
			Open: func(h *connector.Host) (connector.Source, error) {
				return &source{host: h, addr: addr, backoff: backoff}, nil
			}})
	}
	return out, nil
}

// source is one session. The runtime calls Run once and Handle per command.
type source struct {
	host    *connector.Host
	addr    string
	backoff time.Duration

	mu   sync.Mutex
	conn net.Conn // the live connection, nil while disconnected
}

func (s *source) Commands() []string { return []string{"send"} }

// Run connects, reads until the connection ends and reconnects after the
// backoff, until the runtime stops the session (ctx).
func (s *source) Run(ctx context.Context) error {
	defer s.status(ctx, connector.Status{State: connector.StateStopped})
	for failures := 0; ; failures++ {
		s.status(ctx, connector.Status{State: connector.StateConnecting, Attempt: failures})
		conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", s.addr)
		if err == nil {
			failures = 0 // consecutive failures: a connection resets the count
			err = s.read(ctx, conn)
		}
		if ctx.Err() != nil {
			return nil
		}
		s.host.Metrics().Reconnects.WithLabelValues("ended").Inc()
		s.status(ctx, connector.Status{State: connector.StateReconnecting, Reason: err.Error(),
			Attempt: failures + 1, BackoffMS: s.backoff.Milliseconds()})
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.backoff):
		}
	}
}

// read publishes every line of conn until it ends (or ctx does).
func (s *source) read(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // unblocks the read
	s.setConn(conn)
	s.host.Metrics().Connected.Set(1)
	defer func() { stop(); s.setConn(nil); conn.Close(); s.host.Metrics().Connected.Set(0) }()
	s.status(ctx, connector.Status{State: connector.StateConnected, Detail: map[string]string{"addr": s.addr}})
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, 64<<10) // a longer line ends the connection (bufio.ErrTooLong)
	for sc.Scan() {
		// Payload is the line verbatim; the runtime owns it after Emit: a copy,
		// since the scanner reuses its buffer. High lane: Emit waits for room.
		ev := connector.Event{Lane: connector.LaneHigh, Payload: bytes.Clone(sc.Bytes())}
		var head struct {
			Type string `json:"type"`
		}
		if t := bytes.TrimSpace(ev.Payload); len(t) > 0 && t[0] == '{' && json.Valid(t) {
			_ = json.Unmarshal(t, &head)        // a "type" that is no string counts as none
			ev.Type = subjects.Token(head.Type) // upstream text: one safe token
			ev.Subject = subjects.LinesEvent(s.host.Name(), ev.Type)
		} else {
			s.host.Metrics().Malformed.Inc()
			ev.Type, ev.Subject = "malformed", subjects.Malformed(subjects.KindLines, s.host.Name())
		}
		if err := s.host.Emit(ctx, ev); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return errors.New("closed by the server")
}

func (s *source) setConn(c net.Conn) { s.mu.Lock(); s.conn = c; s.mu.Unlock() }

// status publishes a lifecycle event; it outlives ctx, so "stopped" is stored.
func (s *source) status(ctx context.Context, st connector.Status) {
	if err := s.host.SetStatus(context.WithoutCancel(ctx), st); err != nil {
		log := s.host.Log() // a value: Error has a pointer receiver
		log.Error().Err(err).Str("state", st.State).Msg("status lost")
	}
}

// Handle serves send: {"line":"..."} is written upstream, with its newline.
// Anything else is refused before it reaches the socket.
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
