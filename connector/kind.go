package connector

import (
	"flag"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/schemas"
	"github.com/jetbridge/connector/subjects"
)

// Kind is one kind of upstream as one unit: its subjects, streams and buckets,
// its configuration, the sessions that configuration declares, and optionally
// a simulator. The command line, provisioning, the audit stream, the replay
// guard and the demo iterate the kinds given to them; there is no global
// registry: main lists the kinds it is built with, in the spirit of Benthos's
// service.RegisterInput(name, spec, ctor).
type Kind struct {
	// Subjects names the kind's subjects, streams and buckets; it is declared
	// in subjects/<kind>.go, the one place that names the contract.
	Subjects subjects.Kind
	// Title names the kind for people, for example "Line source".
	Title string
	// Enable says what to set for the kind to run (the variable its
	// Configured looks at), for the error when no kind is configured.
	Enable string
	// Config returns the kind's configuration before the environment is
	// read: a pointer to a struct whose envconfig tags name the variables
	// and whose default tags are the defaults (see Defaults).
	Config func() KindConfig
	// Simulator, if the kind has one, serves `connector sim <kind>`.
	Simulator Simulator
	// Demo, if set, is the kind's part of `connector demo`.
	Demo *Demo
	// Schemas are the JSON Schemas of the kind's payloads and commands
	// (`connector schemas`).
	Schemas schemas.Set
}

// Demo is a kind's part of `connector demo`: simulators on loopback, sessions
// connected to them, and commands a newcomer can paste.
type Demo struct {
	// Summary says what runs, for the demo's first line.
	Summary string
	// Try lists commands to paste into another terminal; NATSURL in them
	// stands for the demo's NATS URL.
	Try []string
	// Replay is a `go run ./cmd/connector replay` command line worth trying
	// (NATSURL as in Try).
	Replay string
	// Start starts the simulators and returns what they serve.
	Start func(log zerolog.Logger) (DemoStart, error)
}

// DemoStart is what a kind's Demo.Start started.
type DemoStart struct {
	// Sessions are connected to the simulators.
	Sessions []Session
	// Env declares the same sessions to `connector run` (the kind's
	// variables), so that `connector demo -replicas` can run them in
	// separate processes.
	Env map[string]string
	// Stop stops the simulators (after the sessions stopped).
	Stop func()
}

// NATSURL stands for the NATS URL in Demo.Try and Demo.Replay.
const NATSURL = "{nats}"

// Name is the kind's first subject token.
func (k Kind) Name() string { return k.Subjects.Name }

// KindConfig is a kind's configuration, read from the environment by
// envconfig into the struct behind it.
type KindConfig interface {
	// EnvPrefix is the prefix the struct is read with ("" when its tags carry
	// the full variable names).
	EnvPrefix() string
	// Configured reports whether the environment asks for the kind, for
	// CONNECTOR_SOURCES=auto (for example: an API key is set).
	Configured() bool
	// Sessions validates the configuration and returns the sessions it
	// declares. Errors name the variable at fault.
	Sessions() ([]Session, error)
}

// Simulator registers a simulator's flags on fs; once they are parsed, the
// returned SimulatorRun validates and starts it.
type Simulator func(fs *flag.FlagSet) SimulatorRun

// SimulatorRun is a simulator configured by its flags.
type SimulatorRun struct {
	// Validate reports a bad flag value (a usage error).
	Validate func() error
	// Start listens and serves until stop is called; addr is what clients dial.
	Start func(log zerolog.Logger) (addr string, stop func(), err error)
}
