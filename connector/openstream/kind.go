package openstream

import (
	"flag"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/connector/openstream/sim"
	"github.com/jetbridge/connector/subjects"
)

// Kind is the Hyundai Hi6 Open Stream as one unit of the connector: main
// lists it among the kinds it is built with.
func Kind() connector.Kind {
	return connector.Kind{
		Subjects:  subjects.OpenStream(),
		Title:     "Open Stream source",
		Enable:    "OPENSTREAM_ROBOTS",
		Config:    func() connector.KindConfig { return &Config{} },
		Simulator: simulator,
		Demo:      demo(),
		Schemas:   Schemas(),
	}
}

// EnvPrefix implements connector.KindConfig: the tags carry the full names.
func (c *Config) EnvPrefix() string { return "" }

// Configured implements connector.KindConfig: robots are listed.
func (c *Config) Configured() bool { return c.Robots != "" }

// Sessions implements connector.KindConfig: one session per robot of
// OPENSTREAM_ROBOTS.
func (c *Config) Sessions() ([]connector.Session, error) {
	if c.Robots == "" {
		return nil, fmt.Errorf("%s is empty: no robot to connect to", env("ROBOTS"))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	robots, err := c.ParseRobots()
	if err != nil {
		return nil, err
	}
	out := make([]connector.Session, len(robots))
	for i, rc := range robots {
		out[i] = RobotSession(rc, *c)
	}
	return out, nil
}

// RobotSession is the session of one robot; its source is built by New.
func RobotSession(robot RobotConfig, common Config) connector.Session {
	return connector.Session{
		Kind: subjects.KindOpenStream, Name: robot.Name, Lanes: common.LaneSizes(),
		Open: func(h *connector.Host) (connector.Source, error) { return New(robot, common, h) },
	}
}

// simulator serves `connector sim openstream`: one robot controller.
func simulator(fs *flag.FlagSet) connector.SimulatorRun {
	cfg := sim.DefaultConfig()
	cfg.RegisterFlags(fs)
	return connector.SimulatorRun{
		Validate: func() error { return nil },
		Start: func(log zerolog.Logger) (string, func(), error) {
			srv := sim.New(cfg, log)
			addr, err := srv.Start(cfg.Addr)
			if err != nil {
				return "", nil, err
			}
			return addr, func() { _ = srv.Close() }, nil
		},
	}
}
