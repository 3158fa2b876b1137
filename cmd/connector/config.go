package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/kelseyhightower/envconfig"

	"github.com/jetbridge/connector/connector"
	"github.com/jetbridge/connector/subjects"
)

// Config is the process-wide configuration. Source-specific variables live in
// each source's own Config; every variable is listed in the README.
type Config struct {
	LogLevel  string `envconfig:"LOG_LEVEL" default:"info" desc:"trace, debug, info, warn or error"`
	LogFormat string `envconfig:"LOG_FORMAT" default:"auto" desc:"json, console, or auto (console when stdout is a terminal)"`
	HTTPAddr  string `envconfig:"CONNECTOR_HTTP_ADDR" default:"127.0.0.1:8080" desc:"address of /healthz, /readyz, /metrics and /status; empty disables"`
	Sources   string `envconfig:"CONNECTOR_SOURCES" default:"auto" desc:"sources to run: kind names (lasersell, openstream), comma-separated, or auto (each kind whose upstream is configured)"`

	// Embedded (anonymous) so envconfig reads their tags as they are, without
	// prefixing the field name.
	NATSConfig
	EmbeddedConfig

	PublishWindow        int           `envconfig:"CONNECTOR_PUBLISH_WINDOW" default:"4096" desc:"unacknowledged low-lane JetStream publishes: one window shared by the low lanes of all sessions when they publish one message at a time, per low-lane stream with fast batches (flow acks every half window at most); the high lane publishes one at a time"`
	FastBatch            bool          `envconfig:"CONNECTOR_FAST_BATCH" default:"true" desc:"publish the low lanes in fast batches (one flow ack per many events) when the server allows them (nats-server 2.14+); false, or an older server, publishes one message at a time; /status shows which"`
	LowLaneReceived      bool          `envconfig:"CONNECTOR_LOW_LANE_RECEIVED" default:"true" desc:"stamp low-lane telemetry (pnl, data) with Connector-Received; false leaves Connector-Seq alone (37 bytes less per message; JetStream's own timestamp says when it was stored)"`
	LowLaneShed          string        `envconfig:"CONNECTOR_LOW_LANE_SHED" default:"oldest" desc:"what a full low lane gives up for a new event: oldest (the oldest queued event, a Connector-Seq gap) or latest (the queued event of the same subject, replaced in its place and counted in connector_lane_superseded_total; when its subject has none queued, the oldest event that a newer one of its subject supersedes, among the 64 oldest, else the oldest)"`
	AckTimeout           time.Duration `envconfig:"CONNECTOR_ACK_TIMEOUT" default:"5s" desc:"wait for one publish ack before retrying it"`
	DrainTimeout         time.Duration `envconfig:"CONNECTOR_DRAIN_TIMEOUT" default:"10s" desc:"at shutdown, how long queued events may take to reach JetStream"`
	CommandTimeout       time.Duration `envconfig:"CONNECTOR_COMMAND_TIMEOUT" default:"10s" desc:"upper bound for executing one command"`
	KVReplicas           int           `envconfig:"CONNECTOR_KV_REPLICAS" default:"1" desc:"replicas of the connector's KV buckets"`
	CommandMaxBytes      int           `envconfig:"CONNECTOR_COMMAND_MAX_BYTES" default:"65536" desc:"largest command request body; bigger ones are refused with request_too_large"`
	CommandRate          float64       `envconfig:"CONNECTOR_COMMAND_RATE" default:"1000" desc:"commands per second per session (beyond: rate_limited); negative disables the limit"`
	CommandBurst         int           `envconfig:"CONNECTOR_COMMAND_BURST" default:"1000" desc:"commands a session accepts back to back before the rate applies"`
	QuietUnknownSessions bool          `envconfig:"CONNECTOR_QUIET_UNKNOWN_SESSIONS" default:"false" desc:"do not answer commands for sessions this process does not serve (several connector processes on one NATS account)"`
	Replica              string        `envconfig:"CONNECTOR_REPLICA" desc:"this process's name in a fleet, unique among live replicas (default: <host name>-<pid>); a restart under the same name adopts its leases at once"`
	LeaseTTL             time.Duration `envconfig:"CONNECTOR_LEASE_TTL" default:"15s" desc:"a session's lease lifetime in CONNECTOR_LEASES: a dead owner's sessions move after at most this long; must outlast a JetStream leader election (4-9 s measured): renewed every tenth of it, an owner rides out an election of the leases bucket of up to 5/8 of it (9.4 s at 15s); same on every replica"`
	SingleLane           bool          `envconfig:"CONNECTOR_SINGLE_LANE" default:"false" desc:"measurement only: one FIFO for every event, no priority, nothing dropped"`
}

// NATSConfig uses the nats CLI's variable names, so one environment serves both.
type NATSConfig struct {
	URL      string `envconfig:"NATS_URL" desc:"NATS server URL(s), comma-separated; empty starts an embedded server"`
	Creds    string `envconfig:"NATS_CREDS" desc:"user credentials file (JWT + NKey seed)"`
	NKey     string `envconfig:"NATS_NKEY" desc:"NKey seed file"`
	User     string `envconfig:"NATS_USER" desc:"user name"`
	Password string `envconfig:"NATS_PASSWORD" desc:"password"`
	Token    string `envconfig:"NATS_TOKEN" desc:"authentication token"`
	CA       string `envconfig:"NATS_CA" desc:"CA certificate file for TLS"`
	Cert     string `envconfig:"NATS_CERT" desc:"client certificate file for TLS"`
	Key      string `envconfig:"NATS_KEY" desc:"client key file for TLS"`
}

// EmbeddedConfig applies when NATS_URL is empty.
type EmbeddedConfig struct {
	Listen   string `envconfig:"CONNECTOR_NATS_LISTEN" default:"127.0.0.1:4222" desc:"listen address of the embedded NATS server"`
	StoreDir string `envconfig:"CONNECTOR_NATS_STORE_DIR" default:"./data/nats" desc:"JetStream data directory of the embedded server"`
}

// streamEnv is the per-stream retention, read from STREAM_<NAME>_<FIELD>.
// split_words rather than name tags: with a prefix, a name tag would make
// envconfig fall back to the bare name (MAX_AGE...) when the prefixed one is unset.
type streamEnv struct {
	MaxAge      time.Duration `split_words:"true"`
	MaxBytes    int64         `split_words:"true"`
	Replicas    int           `split_words:"true"`
	Storage     string        `split_words:"true"`
	Duplicates  time.Duration `split_words:"true"`
	PersistMode string        `split_words:"true"`
}

// configError is bad configuration or command-line usage: the process exits
// with status 2 and one line saying it.
type configError struct {
	msg   string
	usage bool // a flag or argument, not the environment
}

func (e *configError) Error() string {
	if e.usage {
		return e.msg
	}
	return "configuration: " + e.msg
}

func badConfig(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// badUsage reports a wrong flag or argument (the message names the command).
func badUsage(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...), usage: true}
}

// loadEnv fills spec from the environment, turning envconfig's errors into one
// line naming the variable.
func loadEnv(prefix string, spec any) error {
	if err := envconfig.Process(prefix, spec); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return badConfig("%s=%q is not a valid %s", pe.KeyName, pe.Value, typeName(pe.TypeName))
		}
		return badConfig("%v", err)
	}
	return nil
}

func typeName(t string) string {
	switch t {
	case "time.Duration":
		return "duration (for example 500ms, 5s, 24h)"
	case "int", "int64", "uint64", "uint16", "uint32":
		return "whole number"
	case "float64":
		return "number"
	case "bool":
		return "boolean (true or false)"
	}
	return t
}

func loadConfig() (Config, error) {
	var cfg Config
	if err := loadEnv("", &cfg); err != nil {
		return cfg, err
	}
	return cfg, cfg.validate()
}

// validReplicaName accepts CONNECTOR_REPLICA: a KV key of the membership
// bucket, so 1-64 letters, digits, '-', '_' or '.', not starting or ending
// with '.' ("" takes the default).
func validReplicaName(name string) error {
	if name == "" {
		return nil
	}
	ok := len(name) <= 64 && name[0] != '.' && name[len(name)-1] != '.'
	for _, r := range name {
		ok = ok && (r == '-' || r == '_' || r == '.' || r < 0x80 && (unicode.IsLetter(r) || unicode.IsDigit(r)))
	}
	if !ok {
		return badConfig("CONNECTOR_REPLICA=%q must be 1-64 letters, digits, '-', '_' or '.' (not first or last)", name)
	}
	return nil
}

// replicaName is CONNECTOR_REPLICA, or <host name>-<pid>: unique among live
// processes, and the same after a container restart (same host name, pid 1),
// so such a restart adopts its leases.
func (c Config) replicaName() string {
	if c.Replica != "" {
		return c.Replica
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "connector"
	}
	// A host name may hold characters a KV key may not (':' or '%'): each becomes '-'.
	host = strings.Map(func(r rune) rune {
		if r < 0x80 && (unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_' || r == '.') {
			return r
		}
		return '-'
	}, host)
	return strings.Trim(fmt.Sprintf("%.50s-%d", host, os.Getpid()), ".")
}

func (c Config) validate() error {
	switch strings.ToLower(c.LogLevel) {
	case "trace", "debug", "info", "warn", "error":
	default:
		return badConfig("LOG_LEVEL=%q must be trace, debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "auto", "json", "console":
	default:
		return badConfig("LOG_FORMAT=%q must be auto, json or console", c.LogFormat)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return badConfig("CONNECTOR_HTTP_ADDR=%q is not host:port", c.HTTPAddr)
		}
	}
	if err := validNATSURLs(c.NATSConfig.URL); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.EmbeddedConfig.Listen); err != nil {
		return badConfig("CONNECTOR_NATS_LISTEN=%q is not host:port", c.EmbeddedConfig.Listen)
	}
	switch c.LowLaneShed {
	case "oldest", "latest":
	default:
		return badConfig("CONNECTOR_LOW_LANE_SHED=%q must be oldest or latest", c.LowLaneShed)
	}
	if c.PublishWindow < 1 || c.PublishWindow > 65536 {
		return badConfig("CONNECTOR_PUBLISH_WINDOW=%d must be 1..65536", c.PublishWindow)
	}
	for name, d := range map[string]time.Duration{
		"CONNECTOR_ACK_TIMEOUT": c.AckTimeout, "CONNECTOR_DRAIN_TIMEOUT": c.DrainTimeout, "CONNECTOR_COMMAND_TIMEOUT": c.CommandTimeout,
	} {
		if d <= 0 {
			return badConfig("%s=%s must be positive", name, d)
		}
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL > 10*time.Minute {
		return badConfig("CONNECTOR_LEASE_TTL=%s must be 1s..10m (it must outlast a JetStream leader election: 15s is the default)", c.LeaseTTL)
	}
	if err := validReplicaName(c.Replica); err != nil {
		return err
	}
	if c.CommandMaxBytes < 64 || c.CommandMaxBytes > 8<<20 {
		return badConfig("CONNECTOR_COMMAND_MAX_BYTES=%d must be 64..8388608", c.CommandMaxBytes)
	}
	if c.CommandRate == 0 {
		return badConfig("CONNECTOR_COMMAND_RATE=0 would refuse every command; use a negative value to disable the limit")
	}
	if c.CommandBurst < 1 {
		return badConfig("CONNECTOR_COMMAND_BURST=%d must be at least 1", c.CommandBurst)
	}
	if c.KVReplicas < 1 || c.KVReplicas > 5 {
		return badConfig("CONNECTOR_KV_REPLICAS=%d must be 1..5", c.KVReplicas)
	}
	if c.NATSConfig.User != "" && c.NATSConfig.Password == "" {
		return badConfig("NATS_USER is set without NATS_PASSWORD: set both, or neither")
	}
	if c.NATSConfig.Password != "" && c.NATSConfig.User == "" {
		return badConfig("NATS_PASSWORD is set without NATS_USER: set both, or neither")
	}
	if err := validGOGC(os.Getenv("GOGC")); err != nil {
		return err
	}
	if err := validGOMAXPROCS(os.Getenv("GOMAXPROCS")); err != nil {
		return err
	}
	if (c.NATSConfig.Cert == "") != (c.NATSConfig.Key == "") {
		return badConfig("NATS_CERT and NATS_KEY must be set together")
	}
	for name, path := range map[string]string{"NATS_CREDS": c.NATSConfig.Creds, "NATS_NKEY": c.NATSConfig.NKey, "NATS_CA": c.NATSConfig.CA, "NATS_CERT": c.NATSConfig.Cert, "NATS_KEY": c.NATSConfig.Key} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return badConfig("%s=%q cannot be read: %v", name, path, errors.Unwrap(err))
		}
	}
	if c.NATSConfig.URL == "" && (c.NATSConfig.CA != "" || c.NATSConfig.Cert != "") {
		return badConfig("NATS_CA/NATS_CERT are set but NATS_URL is empty: the embedded server does not use TLS; set NATS_URL to the TLS server (tls://host:4222)")
	}
	return checkNATSTLS(c.NATSConfig)
}

// validNATSURLs checks the syntax of NATS_URL (nats.go adds nats:// to a bare
// host:port). An entry needs a host, and a scheme or a port: a bare word such
// as "bogus" is a mistake far more often than a host on port 4222. The error
// never echoes the URL: it may carry a password.
func validNATSURLs(list string) error {
	if list == "" {
		return nil
	}
	for i, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		bare := !strings.Contains(raw, "://")
		if bare {
			raw = "nats://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			return badConfig("NATS_URL: entry %d is not a server URL such as nats://host:4222", i+1)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return badConfig("NATS_URL: entry %d has scheme %q; use nats, tls, ws or wss", i+1, u.Scheme)
		}
		port := u.Port()
		if bare && port == "" {
			return badConfig("NATS_URL: entry %d has neither a scheme nor a port; write it as nats://host:4222", i+1)
		}
		if port != "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return badConfig("NATS_URL: entry %d has port %s; a port is 1..65535", i+1, port)
			}
		}
	}
	return nil
}

// validGOGC checks GOGC, which the Go runtime reads and silently ignores when
// it is neither a number nor "off".
func validGOGC(v string) error {
	if v == "" || v == "off" {
		return nil
	}
	if _, err := strconv.Atoi(v); err != nil {
		return badConfig("GOGC=%q must be a number (percent, for example 400) or off", v)
	}
	return nil
}

// validGOMAXPROCS checks GOMAXPROCS, which the Go runtime silently ignores
// when it is not a positive number; set, it also turns the processor
// controller off (internal/procscale), so a typo must not pass.
func validGOMAXPROCS(v string) error {
	if v == "" {
		return nil
	}
	if n, err := strconv.Atoi(v); err != nil || n < 1 {
		return badConfig("GOMAXPROCS=%q must be a positive number of processors; unset, the connector sizes them to its load", v)
	}
	return nil
}

// streamFields are the FIELD parts of STREAM_<NAME>_<FIELD>.
var streamFields = []string{"MAX_AGE", "MAX_BYTES", "REPLICAS", "STORAGE", "DUPLICATES", "PERSIST_MODE"}

// checkStreamVars refuses STREAM_* variables that name no stream or no
// field: envconfig would ignore a misspelt one, and the stream would silently
// keep its default retention.
func checkStreamVars(environ []string, streams []string) error {
	var bad []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "STREAM_") {
			bad = append(bad, name)
		}
	}
	slices.Sort(bad)
	for _, name := range bad {
		rest := strings.TrimPrefix(name, "STREAM_")
		field := ""
		for _, f := range streamFields {
			if strings.HasSuffix(rest, "_"+f) {
				field = f
				break
			}
		}
		if field != "" {
			stream := strings.TrimSuffix(rest, "_"+field)
			if slices.Contains(streams, stream) {
				continue
			}
			return badConfig("%s: there is no stream %s; did you mean STREAM_%s_%s? (streams: %s)",
				name, stream, nearest(stream, streams), field, strings.Join(streams, ", "))
		}
		for _, s := range streams {
			if strings.HasPrefix(rest, s+"_") {
				got := strings.TrimPrefix(rest, s+"_")
				return badConfig("%s: stream %s has no setting %s; did you mean STREAM_%s_%s? (settings: %s)",
					name, s, got, s, nearest(got, streamFields), strings.Join(streamFields, ", "))
			}
		}
		return badConfig("%s is not a stream setting: use STREAM_<NAME>_<SETTING> with NAME one of %s and SETTING one of %s",
			name, strings.Join(streams, ", "), strings.Join(streamFields, ", "))
	}
	return nil
}

// nearest returns the candidate with the smallest edit distance to s.
func nearest(s string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if d := editDistance(s, c); bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (bytes: the names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// retention reads STREAM_<NAME>_* over the defaults of every stream of the
// kinds, so a bad value stops start-up instead of surfacing when the stream
// is created.
func retention(kinds []connector.Kind) (func(subjects.StreamSpec) connector.Retention, error) {
	var known []string
	for _, spec := range subjects.Streams(subjectKinds(builtinKinds())...) {
		known = append(known, spec.Name)
	}
	if err := checkStreamVars(os.Environ(), known); err != nil {
		return nil, err
	}
	byName := map[string]connector.Retention{}
	for _, spec := range subjects.Streams(subjectKinds(kinds)...) {
		d := connector.DefaultRetention(spec)
		env := streamEnv{MaxAge: d.MaxAge, MaxBytes: d.MaxBytes, Replicas: d.Replicas, Storage: d.Storage, Duplicates: d.Duplicates, PersistMode: d.Persist}
		prefix := "STREAM_" + spec.Name
		if err := loadEnv(prefix, &env); err != nil {
			return nil, err
		}
		r := connector.Retention{MaxAge: env.MaxAge, MaxBytes: env.MaxBytes, Replicas: env.Replicas, Storage: strings.ToLower(env.Storage),
			Duplicates: env.Duplicates, Persist: strings.ToLower(env.PersistMode)}
		if err := r.ValidateFor(spec); err != nil {
			return nil, badConfig("%s_*: %v", prefix, err)
		}
		byName[spec.Name] = r
	}
	return func(spec subjects.StreamSpec) connector.Retention { return byName[spec.Name] }, nil
}
