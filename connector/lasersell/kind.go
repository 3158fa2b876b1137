package lasersell

import (
	"errors"
	"flag"
	"os"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/lasersell/sim"
	"github.com/jetbridge/connector/subjects"
)

// Kind is the LaserSell Exit Intelligence Stream as one unit of the
// connector: main lists it among the kinds it is built with.
func Kind() connector.Kind {
	return connector.Kind{
		Subjects:  subjects.LaserSell(),
		Title:     "LaserSell source",
		Enable:    "LASERSELL_API_KEY (or LASERSELL_API_KEY_FILE)",
		Config:    func() connector.KindConfig { return &Config{} },
		Simulator: simulator,
		Demo:      demo(),
		Schemas:   Schemas(),
	}
}

// EnvPrefix implements connector.KindConfig.
func (c *Config) EnvPrefix() string { return EnvPrefix }

// Sessions implements connector.KindConfig: LASERSELL_SESSION, or each of
// LASERSELL_SESSION_NAMES with its own variables (sessions.go).
func (c *Config) Sessions() ([]connector.Session, error) {
	if len(c.SessionNames) == 0 {
		if err := c.Validate(); err != nil {
			return nil, err
		}
		return []connector.Session{NewSession(*c)}, nil
	}
	if _, set := os.LookupEnv(EnvPrefix + "_SESSION"); set {
		return nil, errors.New("LASERSELL_SESSION and LASERSELL_SESSION_NAMES are both set: set only one")
	}
	cfgs, err := c.sessionConfigs()
	if err != nil {
		return nil, err
	}
	out := make([]connector.Session, len(cfgs))
	for i, sc := range cfgs {
		out[i] = NewSession(sc)
	}
	return out, nil
}

// NewSession is the session cfg declares; its source is built by New.
func NewSession(cfg Config) connector.Session {
	return connector.Session{
		Kind: subjects.KindLaserSell, Name: cfg.Session, Lanes: cfg.LaneSizes(),
		Open: func(h *connector.Host) (connector.Source, error) { return New(cfg, h) },
	}
}

// simulator serves `connector sim lasersell`: the demo configuration, changed by flags.
func simulator(fs *flag.FlagSet) connector.SimulatorRun {
	cfg := sim.DemoConfig()
	cfg.RegisterFlags(fs)
	return connector.SimulatorRun{
		// A closure, not the method value cfg.Validate: that would copy cfg
		// now, before the flags are parsed into it.
		Validate: func() error { return cfg.Validate() },
		Start: func(log zerolog.Logger) (string, func(), error) {
			srv := sim.New(cfg, log)
			url, err := srv.Start(cfg.Addr)
			if err != nil {
				return "", nil, err
			}
			return url, srv.Close, nil
		},
	}
}
