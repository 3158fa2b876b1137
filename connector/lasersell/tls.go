package lasersell

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptrace"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jetbridge/connector/connector"
)

// TLS to the upstream (wss://). The connector trusts the system roots; a
// private CA (a TLS-inspecting corporate proxy, a test server) is added with
// LASERSELL_CA_FILE. The file *adds to* the system roots rather than replacing
// them: behind a corporate proxy some destinations are inspected (signed by
// the proxy's CA) and others are not, and both must verify. Only TLS 1.2 and
// newer are accepted. The server name checked is the URL's host (the
// WebSocket dialer fills it in), never a configured override.
//
// The dialer writes the upgrade request, and with it the x-api-key header,
// only after the TLS handshake and the certificate checks succeeded: a
// server whose certificate is refused never receives the key.

// tlsConfig is the client TLS configuration of the upstream connection.
func (c Config) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile == "" {
		return cfg, nil // RootCAs nil: the system roots
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		// No system roots on this platform: the private CA alone.
		pool = x509.NewCertPool()
	}
	certs, err := readCAFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("LASERSELL_CA_FILE: %w", err)
	}
	for _, cert := range certs {
		pool.AddCert(cert)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// readCAFile reads the PEM certificates of a CA file. A file that cannot be
// read, holds no certificate, or holds one that does not parse is refused at
// start rather than found out at the first handshake.
func readCAFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %q: %w", path, errors.Unwrap(err))
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue // a bundle may carry other blocks; only certificates are trusted
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%q: certificate %d does not parse: %w", path, len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%q holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path)
	}
	return certs, nil
}

// dialProgress records how far a dial got, so that its failure is told
// apart: no TCP connection, a TLS handshake that failed or stalled, or a
// WebSocket upgrade that was never answered.
type dialProgress struct {
	tcpUp    atomic.Bool // the TCP connection (to the server or the proxy) is up
	tlsBegan atomic.Bool // the TLS handshake started
	tlsOK    atomic.Bool // the TLS handshake and the certificate checks succeeded
}

// dialProgressKey carries the dial's *dialProgress in its context (netDial
// marks tcpUp through it).
type dialProgressKey struct{}

// withDialProgress returns ctx carrying a fresh dialProgress, and the hooks
// the WebSocket dialer calls around its TLS handshake.
func withDialProgress(ctx context.Context) (context.Context, *dialProgress) {
	p := &dialProgress{}
	ctx = context.WithValue(ctx, dialProgressKey{}, p)
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		TLSHandshakeStart: func() { p.tlsBegan.Store(true) },
		TLSHandshakeDone:  func(_ tls.ConnectionState, err error) { p.tlsOK.Store(err == nil) },
	}), p
}

// inTLS reports whether a dial failed during its TLS handshake.
func (p *dialProgress) inTLS() bool { return p.tlsBegan.Load() && !p.tlsOK.Load() }

// tlsFailure describes a dial that failed during its TLS handshake. The text
// quotes the certificate check, never a request header (none was written).
//
//	tls                certificate untrusted, for another host, expired or not
//	                   yet valid; the server does not speak TLS; a TLS alert
//	handshake_timeout  TCP up, the server did not finish the handshake in time
//	dial               the network failed during the handshake (reset, EOF)
func tlsFailure(err error, timeout time.Duration) sessionEnd {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		op       *net.OpError
		ne       net.Error
	)
	bad := func(format string, args ...any) sessionEnd {
		return sessionEnd{code: connector.ReasonTLS, text: "TLS: " + fmt.Sprintf(format, args...)}
	}
	switch {
	case errors.As(err, &unknown):
		return bad("the server's certificate is not signed by a trusted authority (%v); a private or proxy CA goes in LASERSELL_CA_FILE", unknown)
	case errors.As(err, &hostname):
		return bad("the server's certificate is not valid for this host name (%v)", hostname)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return bad("the server's certificate has expired or is not yet valid (%v)", invalid)
	case errors.As(err, &invalid):
		return bad("the server's certificate was refused (%v)", invalid)
	case errors.As(err, &record):
		// The bytes it sent are not quoted: they may be anything.
		return bad("the server did not answer the TLS handshake with TLS (a ws:// endpoint behind a wss:// URL?)")
	case errors.As(err, &op) && op.Op == "remote error":
		return bad("the server refused the handshake (%v)", op.Err)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return sessionEnd{code: connector.ReasonHandshakeTimeout,
			text: fmt.Sprintf("handshake timeout: TCP connected, but the TLS handshake did not complete within %s", timeout)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.As(err, &op):
		return sessionEnd{code: connector.ReasonDial, text: "TLS handshake failed, connection lost: " + err.Error()}
	}
	// Anything else crypto/tls refuses locally: no common version or cipher
	// suite, a malformed handshake message.
	return bad("handshake refused (%v)", err)
}
