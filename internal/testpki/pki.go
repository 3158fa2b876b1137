// Package testpki issues throw-away certificates for tests and benchmarks
// that speak TLS: a private CA, server certificates for loopback, client
// certificates for mutual TLS, and the broken ones (another CA, a wrong host
// name, expired) that TLS fault tests need. Keys are ECDSA P-256, generated
// per call and written as PEM files under a directory the caller owns
// (usually t.TempDir()); nothing is committed to the repository.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority whose certificate is written to CertFile.
type CA struct {
	Name     string
	CertFile string
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
}

// Pair is an issued certificate and its key, as PEM files.
type Pair struct {
	CertFile string
	KeyFile  string
}

// Spec describes a certificate to issue.
type Spec struct {
	// Name is the subject's common name and the base of the file names.
	Name string
	// Hosts are DNS names and IP addresses the certificate is valid for
	// (server certificates). Empty with Client set: a client-only certificate.
	Hosts []string
	// Client adds the client-authentication usage (mutual TLS); a
	// certificate with Hosts and Client serves both.
	Client bool
	// NotBefore and NotAfter default to an hour ago and a day from now.
	NotBefore, NotAfter time.Time
}

// Loopback returns the host names a loopback server certificate covers.
func Loopback() []string { return []string{"127.0.0.1", "::1", "localhost"} }

// NewCA creates a CA named name and writes its certificate to dir.
func NewCA(dir, name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"connector tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA certificate: %w", err)
	}
	ca := &CA{Name: name, cert: cert, key: key, dir: dir, CertFile: filepath.Join(dir, name+"-ca.pem")}
	if err := writePEM(ca.CertFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// Issue signs a certificate for spec and writes it and its key to the CA's
// directory as <name>.pem and <name>-key.pem.
func (ca *CA) Issue(spec Spec) (Pair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("testpki: key for %s: %w", spec.Name, err)
	}
	notBefore, notAfter := spec.NotBefore, spec.NotAfter
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Hour)
	}
	if notAfter.IsZero() {
		notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: spec.Name, Organization: []string{"connector tests"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	for _, h := range spec.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if len(spec.Hosts) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("testpki: certificate for %s: %w", spec.Name, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("testpki: key for %s: %w", spec.Name, err)
	}
	p := Pair{CertFile: filepath.Join(ca.dir, spec.Name+".pem"), KeyFile: filepath.Join(ca.dir, spec.Name+"-key.pem")}
	if err := writePEM(p.CertFile, "CERTIFICATE", der, 0o644); err != nil {
		return Pair{}, err
	}
	if err := writePEM(p.KeyFile, "EC PRIVATE KEY", keyDER, 0o600); err != nil {
		return Pair{}, err
	}
	return p, nil
}

// Pool is a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// Set is what most TLS tests need at once.
type Set struct {
	CA *CA
	// Server is valid for Loopback; Client is a client certificate named
	// "connector" (mutual TLS).
	Server, Client Pair
	// OtherCA signed nothing here: trusting it instead of CA is the
	// "unknown authority" fault.
	OtherCA *CA
	// WrongHost is signed by CA for another host name only; Expired is
	// signed by CA for Loopback and expired an hour ago.
	WrongHost, Expired Pair
}

// NewSet writes a Set under dir.
func NewSet(dir string) (*Set, error) {
	ca, err := NewCA(dir, "test")
	if err != nil {
		return nil, err
	}
	other, err := NewCA(dir, "other")
	if err != nil {
		return nil, err
	}
	s := &Set{CA: ca, OtherCA: other}
	steps := []struct {
		dst  *Pair
		spec Spec
	}{
		{&s.Server, Spec{Name: "server", Hosts: Loopback()}},
		{&s.Client, Spec{Name: "connector", Client: true}},
		{&s.WrongHost, Spec{Name: "wrong-host", Hosts: []string{"upstream.invalid"}}},
		{&s.Expired, Spec{Name: "expired", Hosts: Loopback(), NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}},
	}
	for _, st := range steps {
		if *st.dst, err = ca.Issue(st.spec); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ServerConfig loads pair as a TLS 1.2+ server configuration.
func ServerConfig(pair Pair) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("testpki: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("testpki: write %s: %w", path, err)
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		// crypto/rand does not fail on supported platforms (Go 1.24+ panics
		// itself rather than return an error).
		panic(err)
	}
	return n
}
