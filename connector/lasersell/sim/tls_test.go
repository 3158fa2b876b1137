package sim

import (
	"crypto/tls"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/connector/internal/testpki"
)

// tlsSim starts a simulator configured by the CLI's flags with args on top
// of quietConfig, as `connector sim lasersell` would be.
func tlsSim(t *testing.T, args ...string) *Server {
	t.Helper()
	cfg := quietConfig()
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	s := New(cfg, testLogger(t))
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func pki(t *testing.T) *testpki.Set {
	t.Helper()
	set, err := testpki.NewSet(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// With -tls-cert and -tls-key the simulator serves wss:// (its URL says so),
// speaks the protocol over it, and counts the handshakes; abrupt drops still
// end the connection without a WebSocket close frame.
func TestTLSFlagsServeWSS(t *testing.T) {
	set := pki(t)
	s := tlsSim(t, "-tls-cert", set.Server.CertFile, "-tls-key", set.Server.KeyFile)
	if !strings.HasPrefix(s.URL(), "wss://127.0.0.1:") {
		t.Fatalf("URL %q, want wss://127.0.0.1:PORT", s.URL())
	}
	d := &websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: set.CA.Pool(), MinVersion: tls.VersionTLS12}}
	c := dialWith(t, s, d)
	c.expect("hello_ok")
	c.configure(walletA)
	c.barrier()
	if got := s.Stats().TLSHellos; got != 1 {
		t.Fatalf("TLSHellos = %d, want 1", got)
	}
	if n := s.DropConnections(); n != 1 {
		t.Fatalf("dropped %d connections, want 1", n)
	}
	_, err := c.waitErr(3 * time.Second)
	var ce *websocket.CloseError
	if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
		t.Fatalf("drop sent a close frame: %v", err)
	}
}

// The simulator refuses TLS 1.1 and older, like the production endpoint
// should; a plain ws:// client gets no WebSocket either.
func TestTLSRefusesOldVersionsAndPlainText(t *testing.T) {
	set := pki(t)
	s := tlsSim(t, "-tls-cert", set.Server.CertFile, "-tls-key", set.Server.KeyFile)
	old := &websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: set.CA.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}
	if ws, _, err := old.Dial(s.URL(), http.Header{"X-Api-Key": {testKey}}); err == nil {
		ws.Close()
		t.Fatal("a TLS 1.1 client was served")
	} else if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1 refused with %v, want a protocol version alert", err)
	}
	plain := "ws://" + strings.TrimPrefix(s.URL(), "wss://")
	if ws, _, err := websocket.DefaultDialer.Dial(plain, http.Header{"X-Api-Key": {testKey}}); err == nil {
		ws.Close()
		t.Fatal("a plain-text client was served on the TLS port")
	}
	if st := s.Stats(); st.Connections != 0 {
		t.Fatalf("%d sessions accepted, want 0", st.Connections)
	}
}

// -tls-cert and -tls-key come together; every problem names its flag.
func TestTLSFlagsValidated(t *testing.T) {
	set := pki(t)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-tls-cert", set.Server.CertFile}, "tls-key: required with tls-cert"},
		{[]string{"-tls-key", set.Server.KeyFile}, "tls-cert: required with tls-key"},
		{[]string{"-tls-cert", garbage, "-tls-key", set.Server.KeyFile}, "tls-cert, tls-key: cannot load"},
		{[]string{"-tls-cert", set.Server.CertFile, "-tls-key", set.Client.KeyFile}, "tls-cert, tls-key: cannot load"},
		{[]string{"-tls-cert", filepath.Join(t.TempDir(), "missing.pem"), "-tls-key", set.Server.KeyFile}, "tls-cert, tls-key: cannot load"},
	} {
		cfg := DefaultConfig()
		fs := flag.NewFlagSet("sim", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.RegisterFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
		if _, err := New(cfg, testLogger(t)).Start("127.0.0.1:0"); err == nil {
			t.Errorf("%v: Start succeeded", tc.args)
		}
	}
}
