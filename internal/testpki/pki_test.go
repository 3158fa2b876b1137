package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
)

// TestSetVerifies checks each certificate of a Set against what a TLS client
// does with it: the server and client certificates verify against the CA,
// and each broken one fails for its own reason.
func TestSetVerifies(t *testing.T) {
	s, err := NewSet(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	handshake := func(server Pair, roots *CA, name string) error {
		cfg, err := ServerConfig(server)
		if err != nil {
			return err
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots.Pool(), ServerName: name, MinVersion: tls.VersionTLS12})
		if err != nil {
			return err
		}
		return c.Close()
	}
	if err := handshake(s.Server, s.CA, "127.0.0.1"); err != nil {
		t.Fatalf("server certificate: %v", err)
	}
	if err := handshake(s.Server, s.CA, "localhost"); err != nil {
		t.Fatalf("server certificate by name: %v", err)
	}
	var unknown x509.UnknownAuthorityError
	if err := handshake(s.Server, s.OtherCA, "127.0.0.1"); !errors.As(err, &unknown) {
		t.Fatalf("other CA: want an unknown authority error, got %v", err)
	}
	var host x509.HostnameError
	if err := handshake(s.WrongHost, s.CA, "127.0.0.1"); !errors.As(err, &host) {
		t.Fatalf("wrong host: want a host name error, got %v", err)
	}
	var invalid x509.CertificateInvalidError
	if err := handshake(s.Expired, s.CA, "127.0.0.1"); !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Fatalf("expired: want an expired error, got %v", err)
	}
	client, err := tls.LoadX509KeyPair(s.Client.CertFile, s.Client.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(client.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.CA.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate: %v", err)
	}
	if net.ParseIP(Loopback()[0]) == nil {
		t.Fatal("Loopback must start with an IP address")
	}
}
