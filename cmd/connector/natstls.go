package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go"
)

// checkNATSTLS reads NATS_CA, NATS_CERT and NATS_KEY once at start, so that
// a bad file stops start-up (and `config --check`) with one line naming its
// variable instead of failing every connection attempt. The connections
// read the files again at every (re)connection (nats.RootCAs,
// nats.ClientCert), so a rotated certificate is used from the next one.
func checkNATSTLS(nc NATSConfig) error {
	if nc.CA != "" {
		pem, err := os.ReadFile(nc.CA)
		if err != nil {
			return badConfig("NATS_CA=%q cannot be read: %v", nc.CA, errors.Unwrap(err))
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return badConfig("NATS_CA=%q holds no PEM certificate", nc.CA)
		}
	}
	if nc.Cert != "" {
		// The tls package's errors name PEM block types, never key material.
		if _, err := tls.LoadX509KeyPair(nc.Cert, nc.Key); err != nil {
			return badConfig("NATS_CERT=%q / NATS_KEY=%q are not a certificate and its key: %v", nc.Cert, nc.Key, err)
		}
	}
	return nil
}

// natsTLSOptions are the nats.go options of NATS_CA, NATS_CERT and NATS_KEY:
// TLS 1.2 or newer, the CA (else the system roots) and the client
// certificate, both re-read at every connection. None when neither is set:
// plain TCP, or TLS with the system roots for a tls:// URL or a server that
// requires it (nats.go upgrades then, also to TLS 1.2 or newer).
func natsTLSOptions(nc NATSConfig) []nats.Option {
	if nc.CA == "" && nc.Cert == "" {
		return nil
	}
	opts := []nats.Option{nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12})}
	if nc.CA != "" {
		opts = append(opts, nats.RootCAs(nc.CA))
	}
	if nc.Cert != "" {
		opts = append(opts, nats.ClientCert(nc.Cert, nc.Key))
	}
	return opts
}

// tlsFailure turns an error of a NATS connection attempt that TLS
// verification caused into the configuration error the operator has to act
// on, naming the variable; nil for any other error (a server that is down,
// refused credentials...). These failures do not go away by retrying, so
// start-up stops on them (exit status 2) instead of waiting for ever.
func tlsFailure(err error, nc NATSConfig) error {
	if err == nil {
		return nil
	}
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	var alert tls.AlertError
	switch {
	case errors.As(err, &unknown) && nc.CA == "":
		return badConfig("NATS_CA is not set and the system's CAs do not know the authority that signed the NATS server's certificate (issuer %q): set NATS_CA to that CA's certificate file (%v)",
			issuerOf(unknown.Cert), unknown)
	case errors.As(err, &unknown):
		return badConfig("NATS_CA: the NATS server's certificate (issuer %q) is signed by an unknown authority: not by the CA in NATS_CA=%q (%v)",
			issuerOf(unknown.Cert), nc.CA, unknown)
	case errors.As(err, &host):
		return badConfig("NATS_URL: the NATS server's certificate is not valid for the host in NATS_URL (%v); use a name the certificate lists", host)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return badConfig("NATS_URL: the NATS server's certificate has expired or is not valid yet (%v); the server needs a new certificate", invalid)
	case errors.As(err, &invalid):
		return badConfig("NATS_CA: the NATS server's certificate cannot be used (%v)", invalid)
	case errors.Is(err, nats.ErrSecureConnWanted):
		return badConfig("NATS_URL (tls://) or NATS_CA/NATS_CERT ask for TLS, but the NATS server does not offer it: point NATS_URL at the server's TLS port, or drop them")
	case errors.As(err, &alert) || strings.Contains(err.Error(), "remote error: tls:"):
		return clientCertRefused(err, nc)
	case errors.Is(err, nats.ErrTLS) && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)):
		// The server's alert can lose the race with its close: a server
		// that hangs up right after the handshake did not accept the
		// client's certificate (or its absence).
		return clientCertRefused(err, nc)
	}
	return nil
}

// clientCertRefused explains a TLS alert from the server: with mutual TLS
// the server checks the client's certificate, and says only that it did not
// like it (certificate required, bad certificate, unknown CA).
func clientCertRefused(err error, nc NATSConfig) error {
	if nc.Cert == "" {
		return badConfig("NATS_CERT/NATS_KEY: the NATS server requires a client certificate (mutual TLS): set NATS_CERT and NATS_KEY (%v)", err)
	}
	return badConfig("NATS_CERT: the NATS server refused the client certificate in NATS_CERT=%q (%v): it must be signed by a CA the server trusts, allow client authentication and be valid now",
		nc.Cert, err)
}

func issuerOf(c *x509.Certificate) string {
	if c == nil {
		return "?"
	}
	return c.Issuer.String()
}
