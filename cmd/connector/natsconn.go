package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/embednats"
)

// startNATS returns the URL to connect to: NATS_URL when set, otherwise an
// embedded JetStream server that the caller must stop.
func startNATS(cfg Config, log zerolog.Logger) (url string, embedded *embednats.Server, err error) {
	if cfg.NATSConfig.URL != "" {
		return cfg.NATSConfig.URL, nil, nil
	}
	dir, err := filepath.Abs(cfg.EmbeddedConfig.StoreDir)
	if err != nil {
		return "", nil, fmt.Errorf("embedded NATS store directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", nil, fmt.Errorf("embedded NATS store directory: %w", err)
	}
	srv, err := embednats.Start(embednats.Options{Listen: cfg.EmbeddedConfig.Listen, StoreDir: dir})
	if err != nil {
		return "", nil, badConfig("CONNECTOR_NATS_LISTEN=%q (NATS_URL is empty, so an embedded server starts): %v", cfg.EmbeddedConfig.Listen, err)
	}
	log.Info().Str("url", srv.URL()).Str("store_dir", dir).
		Msg("NATS_URL is not set: started an embedded NATS server with JetStream; point the nats CLI and your services at this URL")
	return srv.URL(), srv, nil
}

// connectNATS opens a client connection that reconnects forever and logs its
// state changes. Credentials come from the nats CLI's variables; none of them is
// ever logged.
//
// TLS verification failures (a server certificate NATS_CA does not verify, a
// client certificate missing or refused) do not fix themselves: when no
// server could be used in the first round over NATS_URL and the last one
// tried failed that way, connectNATS fails with a configuration error
// naming the variable (exit status 2), where a server that is down is
// retried. Such a failure later, on a reconnect (say, the
// server's certificate was replaced by a bad one), is retried and logged
// (once per 10 s) with the same explanation, as the server can be fixed.
func connectNATS(url string, nc NATSConfig, name string, log zerolog.Logger) (*nats.Conn, error) {
	log = log.With().Str("nats_connection", name).Logger()
	if err := checkNATSTLS(nc); err != nil {
		return nil, err
	}
	// The first round's failure goes to start-up's check below; later ones
	// are logged when TLS caused them (nats.go retries every other quietly,
	// and waitConnected reports a server that stays away).
	firstFailure := make(chan error, 1)
	var starting atomic.Bool
	starting.Store(true)
	tlsLog := log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second})
	opts := []nats.Option{
		nats.Name("connector " + name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(32 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("disconnected from NATS; reconnecting")
			}
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if starting.Load() {
				select {
				case firstFailure <- err:
					return
				default:
				}
			}
			if cause := tlsFailure(err, nc); cause != nil {
				tlsLog.Error().Err(cause).Msg("cannot connect to NATS over TLS; retrying")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("url", c.ConnectedUrlRedacted()).Msg("reconnected to NATS")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("NATS asynchronous error")
		}),
	}
	switch {
	case nc.Creds != "":
		opts = append(opts, nats.UserCredentials(nc.Creds))
	case nc.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(nc.NKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %w", err)
		}
		opts = append(opts, opt)
	}
	if nc.User != "" {
		opts = append(opts, nats.UserInfo(nc.User, nc.Password))
	}
	if nc.Token != "" {
		opts = append(opts, nats.Token(nc.Token))
	}
	opts = append(opts, natsTLSOptions(nc)...)
	conn, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	defer starting.Store(false)
	if conn.IsConnected() {
		return conn, nil
	}
	// nats.go tried every server once before returning and hands the last
	// failure to the callback at once.
	select {
	case err := <-firstFailure:
		if cause := tlsFailure(err, nc); cause != nil {
			conn.Close()
			return nil, cause
		}
	case <-time.After(2 * time.Second):
	}
	return conn, nil
}

// waitConnected waits until the connection is up, logging while it is not, so
// a dead NATS at start-up is visible instead of a silent hang.
func waitConnected(ctx context.Context, conn *nats.Conn, log zerolog.Logger) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	nextLog := time.Now().Add(2 * time.Second)
	for !conn.IsConnected() {
		if conn.IsClosed() {
			// nats.go gives up after the same authentication error twice:
			// waiting longer would hang forever without saying why.
			return fmt.Errorf("NATS connection closed: %w", conn.LastError())
		}
		if time.Now().After(nextLog) {
			log.Warn().Str("status", conn.Status().String()).AnErr("last_error", conn.LastError()).Msg("waiting for NATS")
			nextLog = time.Now().Add(10 * time.Second)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}
