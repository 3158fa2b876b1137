// Package embednats starts the NATS server with JetStream inside the connector
// process, for the default run (no NATS_URL), the demo and the tests.
package embednats

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure the embedded server.
type Options struct {
	// Listen is host:port; port 0 picks a free port (tests). Default 127.0.0.1:4222.
	Listen string
	// StoreDir holds JetStream data. Empty means a new temporary directory.
	StoreDir string
	// ServerName appears in monitoring and in `nats server info`.
	ServerName string
}

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
	tempDir string
}

// Start starts the server and waits until it accepts connections.
func Start(opts Options) (*Server, error) {
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:4222"
	}
	host, portStr, err := net.SplitHostPort(opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: %w", opts.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen port %q: %w", portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if port != server.RANDOM_PORT {
		// Say why at once: the server itself only reports, after its start
		// timeout, that it never became ready.
		ln, err := net.Listen("tcp", net.JoinHostPort(host, portStr))
		if err != nil {
			return nil, fmt.Errorf("embedded NATS cannot listen on %s: %w", opts.Listen, err)
		}
		ln.Close()
	}
	s := &Server{}
	if opts.StoreDir == "" {
		dir, err := os.MkdirTemp("", "connector-nats-*")
		if err != nil {
			return nil, fmt.Errorf("embedded NATS store directory: %w", err)
		}
		opts.StoreDir, s.tempDir = dir, dir
	}
	if opts.ServerName == "" {
		opts.ServerName = "connector-embedded"
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: opts.ServerName,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		// Large payloads (raw upstream frames) are allowed up to the default 1 MiB.
	})
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		s.cleanup()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s", opts.Listen)
	}
	s.Server = ns
	return s, nil
}

// URL is the client URL of the server, for example nats://127.0.0.1:4222.
func (s *Server) URL() string { return s.ClientURL() }

// Stop shuts the server down and removes a temporary store directory.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
	s.cleanup()
}

func (s *Server) cleanup() {
	if s.tempDir != "" {
		_ = os.RemoveAll(s.tempDir)
	}
}
