package lasersell

// What the connector puts on the wire before a TLS handshake succeeded:
// nothing but the handshake. A raw TLS server (not the simulator) records
// every byte each client sends and whether an HTTP request ever reached it,
// and a raw TCP listener that never answers stalls the handshake.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/connectortest"
	"github.com/jetbridge/connector/internal/testpki"
)

// wireServer accepts TCP connections on loopback, records what each client
// sends, and serves it with serve (nil: read and never answer). Close (at
// cleanup) ends every connection and waits for their goroutines.
type wireServer struct {
	ln    net.Listener
	serve func(net.Conn) string
	wg    sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	conns    []net.Conn
	wire     []*bytes.Buffer // bytes received, per connection in accept order
	outcomes []string        // what serve returned, per finished connection
}

func startWireServer(t *testing.T, serve func(net.Conn) string) *wireServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wireServer{ln: ln, serve: serve}
	w.wg.Go(w.accept)
	t.Cleanup(w.close)
	return w
}

func (w *wireServer) accept() {
	for {
		c, err := w.ln.Accept()
		if err != nil {
			return
		}
		buf := &bytes.Buffer{}
		w.mu.Lock()
		if w.closed { // accepted while close ran: not served
			w.mu.Unlock()
			_ = c.Close()
			return
		}
		w.conns = append(w.conns, c)
		w.wire = append(w.wire, buf)
		w.mu.Unlock()
		rc := &recordingConn{Conn: c, w: w, buf: buf}
		w.wg.Go(func() {
			defer c.Close()
			out := "read until closed"
			if w.serve == nil {
				_, _ = io.Copy(io.Discard, rc)
			} else {
				out = w.serve(rc)
			}
			w.mu.Lock()
			w.outcomes = append(w.outcomes, out)
			w.mu.Unlock()
		})
	}
}

func (w *wireServer) close() {
	_ = w.ln.Close()
	w.mu.Lock()
	w.closed = true
	for _, c := range w.conns {
		_ = c.Close()
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// url is the wss:// URL of the server.
func (w *wireServer) url() string { return "wss://" + w.ln.Addr().String() + "/v1/ws" }

// received returns a copy of the bytes each connection's client sent, and
// what serve returned for the finished ones.
func (w *wireServer) received() (wire [][]byte, outcomes []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.wire {
		wire = append(wire, bytes.Clone(b.Bytes()))
	}
	return wire, append([]string(nil), w.outcomes...)
}

// recordingConn copies what is read from the client into its buffer.
type recordingConn struct {
	net.Conn
	w   *wireServer
	buf *bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.mu.Lock()
	c.buf.Write(p[:n])
	c.w.mu.Unlock()
	return n, err
}

// tlsThenHTTP serves a connection as a TLS server with cfg and, if the
// handshake succeeds, reads one HTTP request; it reports which of the two
// happened, quoting the request's x-api-key.
func tlsThenHTTP(cfg *tls.Config) func(net.Conn) string {
	return func(c net.Conn) string {
		_ = c.SetDeadline(time.Now().Add(wait))
		tc := tls.Server(c, cfg)
		if err := tc.Handshake(); err != nil {
			return "handshake failed: " + err.Error()
		}
		req, err := http.ReadRequest(bufio.NewReader(tc))
		if err != nil {
			return "no request: " + err.Error()
		}
		return "request " + req.Method + " x-api-key=" + req.Header.Get("x-api-key")
	}
}

// tlsRecordTypes splits a client's bytes into TLS records and returns their
// content types (22 handshake, 21 alert, 20 change_cipher_spec, 23
// application data) and the first handshake message's type (1: ClientHello).
func tlsRecordTypes(t *testing.T, b []byte) (types []byte, firstMsg byte) {
	t.Helper()
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("%d bytes after the last whole TLS record", len(b))
		}
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			t.Fatalf("a TLS record of %d bytes is cut at %d", n, len(b)-5)
		}
		if len(types) == 0 && n > 0 {
			firstMsg = b[5]
		}
		types = append(types, b[0])
		b = b[5+n:]
	}
	return types, firstMsg
}

// The API key travels in the upgrade request, which is written only after
// the TLS handshake and the certificate checks succeeded. A server whose
// certificate the connector refuses (signed by another CA) never receives an
// HTTP request: its handshake fails with the connector's alert. With TLS
// 1.2 the records are readable on the wire: a ClientHello and an alert,
// never application data. The control (a trusted certificate) shows the
// recorder does see the request and the key when the connector goes on.
func TestTLSAPIKeyNeverSentBeforeHandshake(t *testing.T) {
	set := newPKI(t)
	untrusted, err := set.OtherCA.Issue(testpki.Spec{Name: "untrusted-server", Hosts: testpki.Loopback()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		pair       testpki.Pair
		maxVersion uint16
		trusted    bool
	}{
		{"control: trusted certificate", set.Server, 0, true},
		{"untrusted certificate, TLS 1.3", untrusted, 0, false},
		{"untrusted certificate, TLS 1.2", untrusted, tls.VersionTLS12, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := testpki.ServerConfig(tc.pair)
			if err != nil {
				t.Fatal(err)
			}
			cfg.MaxVersion = tc.maxVersion
			w := startWireServer(t, tlsThenHTTP(cfg))
			r := startLoggedRig(t, func() Config {
				c := testConfig(w.url())
				c.CAFile = set.CA.CertFile
				c.BackoffBase = 10 * time.Millisecond
				c.BackoffMax = 20 * time.Millisecond
				return c
			}())
			var wire [][]byte
			var outcomes []string
			connectortest.Eventually(t, wait, "two finished connections", func() bool {
				wire, outcomes = w.received()
				return len(outcomes) >= 2
			})
			for i, out := range outcomes {
				if tc.trusted {
					if out != "request GET x-api-key="+testKey {
						t.Fatalf("connection %d: %q, want the upgrade request with the key (the control)", i+1, out)
					}
					continue
				}
				if !strings.HasPrefix(out, "handshake failed: remote error: tls: ") {
					t.Fatalf("connection %d: %q, want a handshake refused by the connector's alert", i+1, out)
				}
			}
			if tc.trusted {
				return
			}
			for i, b := range wire {
				if bytes.Contains(b, []byte(testKey)) || bytes.Contains(bytes.ToLower(b), []byte("x-api-key")) {
					t.Fatalf("connection %d: the key or its header is on the wire", i+1)
				}
				if tc.maxVersion != tls.VersionTLS12 {
					continue
				}
				types, first := tlsRecordTypes(t, b)
				if first != 1 || !bytes.Equal(types, []byte{22, 21}) {
					t.Fatalf("connection %d: TLS records %v (first message %d), want a ClientHello (22) then an alert (21)", i+1, types, first)
				}
			}
			r.waitStatus(time.Time{}, connector.StateDisconnected, connector.ReasonTLS, wait)
			r.keyNowhere()
			t.Logf("measured: %d connections, outcomes %q", len(wire), outcomes[:2])
		})
	}
}

// A server that accepts TCP and never answers the ClientHello: the dial ends
// within LASERSELL_DIAL_TIMEOUT with reason code handshake_timeout (a stall
// may be load, not a bad certificate: the plain schedule), and all the
// server ever received is the start of a TLS handshake, no request.
func TestTLSStalledHandshakeBoundedByDialTimeout(t *testing.T) {
	set := newPKI(t)
	w := startWireServer(t, nil)
	const dialTimeout = 300 * time.Millisecond
	cfg := testConfig(w.url())
	cfg.CAFile = set.CA.CertFile
	cfg.DialTimeout = dialTimeout
	cfg.BackoffBase = 50 * time.Millisecond
	cfg.BackoffMax = 100 * time.Millisecond
	r := startLoggedRig(t, cfg)
	end := r.waitStatus(time.Time{}, connector.StateDisconnected, connector.ReasonHandshakeTimeout, 4*wait)
	var start time.Time
	for _, st := range r.timeline() {
		if st.State == connector.StateConnecting {
			start = st.At
			break
		}
	}
	took := end.At.Sub(start)
	if took < dialTimeout || took > dialTimeout+time.Second {
		t.Fatalf("the stalled handshake ended after %s, want about the %s dial timeout", took, dialTimeout)
	}
	if !strings.Contains(end.Reason, "TLS handshake did not complete within 300ms") {
		t.Fatalf("reason %q does not name the TLS handshake and its bound", end.Reason)
	}
	rounds := r.waitRounds(2, 4*wait)
	for _, rd := range rounds {
		if rd.Code != connector.ReasonHandshakeTimeout || rd.BackoffMS > cfg.BackoffMax.Milliseconds() {
			t.Fatalf("rounds %+v: want handshake_timeout on the plain schedule (at most %s)", rounds, cfg.BackoffMax)
		}
	}
	wire, _ := w.received()
	for i, b := range wire {
		if len(b) < 6 || b[0] != 22 || b[5] != 1 {
			t.Fatalf("connection %d sent %d bytes that do not start with a ClientHello", i+1, len(b))
		}
		if bytes.Contains(b, []byte(testKey)) || bytes.Contains(bytes.ToLower(b), []byte("x-api-key")) || bytes.Contains(b, []byte("GET ")) {
			t.Fatalf("connection %d: a request or the key is on the wire", i+1)
		}
	}
	if got := r.reconnects(connector.ReasonHandshakeTimeout); got < 2 {
		t.Fatalf("reconnects{reason=handshake_timeout} = %v", got)
	}
	t.Logf("measured: stalled handshake ended after %s (dial timeout %s); %d connections, ClientHello only", took, dialTimeout, len(wire))
}

// TLS 1.2 or newer only: a server that speaks at most TLS 1.1 (with a
// certificate the connector trusts) finds no common version, refuses the
// handshake with an alert, and the connector reports reason code tls on
// the slow schedule; no request reaches the server.
func TestTLSOldVersionRefused(t *testing.T) {
	set := newPKI(t)
	cfg, err := testpki.ServerConfig(set.Server)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	w := startWireServer(t, tlsThenHTTP(cfg))
	c := testConfig(w.url())
	c.CAFile = set.CA.CertFile
	c.BackoffBase = 10 * time.Millisecond
	c.BackoffMax = 20 * time.Millisecond // slow cap: 300 ms
	r := startLoggedRig(t, c)
	rounds := r.waitRounds(4, 4*wait)
	if got, want := backoffsOf(rounds[:4]), []int64{10, 20, 40, 80}; !slices.Equal(got, want) {
		t.Fatalf("backoffs %v ms, want the slow schedule %v", got, want)
	}
	end := r.waitStatus(time.Time{}, connector.StateDisconnected, connector.ReasonTLS, wait)
	if !strings.Contains(end.Reason, "refused the handshake") || !strings.Contains(end.Reason, "protocol version") {
		t.Fatalf("reason %q, want the server's protocol version alert", end.Reason)
	}
	_, outcomes := w.received()
	for i, out := range outcomes {
		if !strings.HasPrefix(out, "handshake failed: ") || strings.HasPrefix(out, "request") {
			t.Fatalf("connection %d: %q, want a failed handshake", i+1, out)
		}
	}
	t.Logf("measured: %q; server side %q", end.Reason, outcomes[0])
}
