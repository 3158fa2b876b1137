package lasersell

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
)

// LASERSELL_CA_FILE is read from the environment under that name, checked at
// start (each problem names the variable), and adds to the system roots.
func TestCAFileValidated(t *testing.T) {
	set := newPKI(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyPEM, err := os.ReadFile(set.Server.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, url, want string
	}{
		{"missing file", filepath.Join(dir, "missing.pem"), "", "LASERSELL_CA_FILE: cannot read"},
		{"a directory", dir, "", "LASERSELL_CA_FILE: cannot read"},
		{"no PEM at all", write("garbage.pem", "not a certificate\n"), "", "LASERSELL_CA_FILE: " + `"` + filepath.Join(dir, "garbage.pem") + `" holds no PEM certificate`},
		{"a key, no certificate", write("key.pem", string(keyPEM)), "", "holds no PEM certificate"},
		{"a broken certificate", write("broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "", "LASERSELL_CA_FILE: " + `"` + filepath.Join(dir, "broken.pem") + `": certificate 1 does not parse`},
		{"ws:// URL", set.CA.CertFile, "ws://127.0.0.1:1/v1/ws", "LASERSELL_CA_FILE is set but LASERSELL_URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("LASERSELL_API_KEY", testKey)
			t.Setenv("LASERSELL_CA_FILE", tc.file)
			if tc.url != "" {
				t.Setenv("LASERSELL_URL", tc.url)
			}
			_, err := ConfigFromEnv()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}

	t.Setenv("LASERSELL_API_KEY", testKey)
	t.Setenv("LASERSELL_URL", "wss://127.0.0.1:1/v1/ws")
	t.Setenv("LASERSELL_CA_FILE", set.CA.CertFile)
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := c.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	if tc.MinVersion != tls.VersionTLS12 || tc.ServerName != "" || tc.InsecureSkipVerify {
		t.Fatalf("TLS config %+v: want TLS 1.2+, the URL's host name, verification on", tc)
	}
	// Both the private CA and the system roots verify (when the platform has any).
	ca, err := readCAFile(set.CA.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca[0].Verify(x509.VerifyOptions{Roots: tc.RootCAs}); err != nil {
		t.Fatalf("the CA file's certificate is not trusted: %v", err)
	}
	if sys, err := x509.SystemCertPool(); err == nil {
		want := sys.Clone()
		want.AddCert(ca[0])
		if !tc.RootCAs.Equal(want) {
			t.Fatal("the root pool is not the system roots plus the CA file")
		}
	}
	def, err := DefaultConfig().tlsConfig()
	if err != nil || def.RootCAs != nil || def.MinVersion != tls.VersionTLS12 {
		t.Fatalf("without a CA file: %+v %v, want the system roots (nil) and TLS 1.2+", def, err)
	}
}

// The TLS failures the integration tests cannot provoke on loopback (an
// alert from the server, a reset, a local refusal) still get their codes.
func TestTLSFailureCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code string
		text string
	}{
		{&net.OpError{Op: "remote error", Err: errors.New("tls: protocol version not supported")}, connector.ReasonTLS, "refused the handshake"},
		{fmt.Errorf("tls: %w", x509.UnknownAuthorityError{}), connector.ReasonTLS, "trusted authority"},
		{&tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.Expired}}, connector.ReasonTLS, "expired"},
		{&tls.CertificateVerificationError{Err: x509.CertificateInvalidError{Reason: x509.IncompatibleUsage}}, connector.ReasonTLS, "was refused"},
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, connector.ReasonTLS, "with TLS"},
		{errors.New("tls: server selected unsupported protocol version 301"), connector.ReasonTLS, "handshake refused"},
		{context.DeadlineExceeded, connector.ReasonHandshakeTimeout, "within 2s"},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, connector.ReasonHandshakeTimeout, "TLS handshake"},
		{io.EOF, connector.ReasonDial, "connection lost"},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, connector.ReasonDial, "connection lost"},
	} {
		got := tlsFailure(tc.err, 2*time.Second)
		if got.code != tc.code || !strings.Contains(got.text, tc.text) {
			t.Errorf("%v: %+v, want code %s and %q", tc.err, got, tc.code, tc.text)
		}
	}
}

// `connector sim lasersell` takes -tls-cert and -tls-key together, naming
// the missing flag, and then advertises a wss:// URL.
func TestSimulatorTLSFlags(t *testing.T) {
	set := newPKI(t)
	parse := func(args ...string) connector.SimulatorRun {
		fs := flag.NewFlagSet("connector sim lasersell", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		run := simulator(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return run
	}
	if err := parse("-tls-cert", set.Server.CertFile).Validate(); err == nil || !strings.Contains(err.Error(), "tls-key") {
		t.Fatalf("-tls-cert alone: %v, want an error naming -tls-key", err)
	}
	if err := parse("-tls-key", set.Server.KeyFile).Validate(); err == nil || !strings.Contains(err.Error(), "tls-cert") {
		t.Fatalf("-tls-key alone: %v, want an error naming -tls-cert", err)
	}
	run := parse("-addr", "127.0.0.1:0", "-tls-cert", set.Server.CertFile, "-tls-key", set.Server.KeyFile)
	if err := run.Validate(); err != nil {
		t.Fatal(err)
	}
	url, stop, err := run.Start(zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if !strings.HasPrefix(url, "wss://127.0.0.1:") {
		t.Fatalf("advertised URL %q, want wss://", url)
	}
}
