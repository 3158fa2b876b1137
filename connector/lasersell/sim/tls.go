package sim

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// The simulator serves wss:// when given a certificate and its key
// (Config.TLSCert and TLSKey, flags -tls-cert and -tls-key), so that the
// connector's TLS path (certificate checks, the handshake's cost on every
// reconnect) is exercised like the production endpoint's. TLS 1.2 or newer
// only, like the connector.

// validateTLS checks that the certificate and key are given together and load.
func (c Config) validateTLS() error {
	switch {
	case c.TLSCert == "" && c.TLSKey == "":
		return nil
	case c.TLSKey == "":
		return errors.New("tls-key: required with tls-cert (give both to serve wss://, or neither)")
	case c.TLSCert == "":
		return errors.New("tls-cert: required with tls-key (give both to serve wss://, or neither)")
	}
	if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
		return fmt.Errorf("tls-cert, tls-key: cannot load the certificate and key: %w", err)
	}
	return nil
}

// tlsListener wraps ln in TLS when the configuration asks for it; hellos
// counts the ClientHellos received (Stats.TLSHellos). It returns ln itself
// for ws://.
func (c Config) tlsListener(ln net.Listener, hellos *atomic.Uint64) (net.Listener, error) {
	if c.TLSCert == "" {
		return ln, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("sim: tls-cert, tls-key: %w", err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			hellos.Add(1)
			return nil, nil // nil: the configuration above
		},
	}
	return tls.NewListener(ln, cfg), nil
}

// rawConn returns the TCP connection under a TLS one: an abrupt drop closes
// it without a close_notify, as a crashed server or a cut link would.
func rawConn(nc net.Conn) net.Conn {
	if tc, ok := nc.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return nc
}
