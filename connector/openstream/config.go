package openstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jetbridge/connector/connector"
)

// Keepalive modes (OPENSTREAM_KEEPALIVE_MODE).
const (
	// KeepaliveStop sends STOP control on a monitor connection, where no
	// CONTROL is ever active: the controller acts on it (nothing_to_stop),
	// which refreshes its watchdog, and the data stream is untouched.
	KeepaliveStop = "stop"
	// KeepaliveMonitor re-sends the active MONITOR, which replaces it with
	// itself; the stream restarts (first data at once), so periods longer than
	// the keepalive interval are distorted. For controllers that do not count
	// nothing_to_stop as activity.
	KeepaliveMonitor = "monitor"
)

// EnvPrefix starts every Open Stream variable. The envconfig tags carry the
// full names and Config is read with an empty prefix: with a prefix, envconfig
// would fall back to the bare name (ROBOTS, ACK_TIMEOUT...) when the prefixed
// variable is unset.
const EnvPrefix = "OPENSTREAM"

// DefaultPort is the Open Stream port of the vendor's example client.
const DefaultPort = 49000

// maxLineLimit keeps every accepted line publishable under NATS's default
// 1 MiB max_payload, with 16 KiB to spare for headers.
const maxLineLimit = 1<<20 - 16<<10

// Config is the Open Stream part of the connector's configuration, read by
// envconfig from the OPENSTREAM_* variables named in its tags.
// Robots, Monitors and ControlAllow are compact strings parsed by ParseRobots.
type Config struct {
	Robots       string `envconfig:"OPENSTREAM_ROBOTS" desc:"robots as name=host[:port], comma-separated (port defaults to 49000), e.g. cell1=10.0.0.5:49000,cell2=10.0.0.6"`
	Monitors     string `envconfig:"OPENSTREAM_MONITORS" desc:"initial MONITORs: robot/name=url@period (e.g. cell1/joints=/project/robot/joints/joint_states@2ms), comma-separated, or JSON {\"robot\":{\"name\":{\"url\":..,\"period_ms\":..,\"args\":{..}}}}; KV desired state wins after the first start"`
	ControlAllow string `envconfig:"OPENSTREAM_CONTROL_ALLOW" desc:"CONTROL allow-list: robot=pattern,pattern;robot2=pattern (path.Match patterns, * within one segment); a robot without a list refuses CONTROL"`
	Major        int    `envconfig:"OPENSTREAM_MAJOR" default:"1" desc:"protocol MAJOR version sent in HANDSHAKE"`

	MaxLine       int           `envconfig:"OPENSTREAM_MAX_LINE" default:"65536" desc:"longest accepted NDJSON line in bytes; longer lines are published as malformed"`
	ReadCoalesce  time.Duration `envconfig:"OPENSTREAM_READ_COALESCE" default:"3ms" desc:"after a read that emptied the socket, wait this long before the next, so that one read system call takes several lines of a fast MONITOR (adds at most this much latency to every line); 0 reads at once"`
	DialTimeout   time.Duration `envconfig:"OPENSTREAM_DIAL_TIMEOUT" default:"5s" desc:"TCP connect timeout"`
	TCPKeepAlive  time.Duration `envconfig:"OPENSTREAM_TCP_KEEPALIVE" default:"15s" desc:"TCP keep-alive probe interval"`
	WriteTimeout  time.Duration `envconfig:"OPENSTREAM_WRITE_TIMEOUT" default:"5s" desc:"a write to the controller that takes longer ends the connection"`
	AckTimeout    time.Duration `envconfig:"OPENSTREAM_ACK_TIMEOUT" default:"3s" desc:"wait for handshake_ack, monitor_ack and stop_ack (or an error)"`
	ControlWindow time.Duration `envconfig:"OPENSTREAM_CONTROL_ERR_WINDOW" default:"100ms" desc:"after a CONTROL request is written, wait this long for a control_err before replying"`
	StopTimeout   time.Duration `envconfig:"OPENSTREAM_STOP_TIMEOUT" default:"500ms" desc:"when a connection ends on purpose (shutdown, STOP session, monitor removed), wait this long for the stop_ack of STOP session before closing"`

	Keepalive     time.Duration `envconfig:"OPENSTREAM_KEEPALIVE" default:"2s" desc:"on a monitor connection, send a keepalive command when no other command was written for this long (the armed watchdog closes after 5 s); 0 disables"`
	KeepaliveMode string        `envconfig:"OPENSTREAM_KEEPALIVE_MODE" default:"stop" desc:"keepalive on monitor connections: stop (STOP control, answered nothing_to_stop; leaves the data stream alone) or monitor (re-send the active MONITOR; restarts its period)"`
	IdleKeepalive time.Duration `envconfig:"OPENSTREAM_IDLE_KEEPALIVE" default:"120s" desc:"on the control connection (no MONITOR, 180 s watchdog), send STOP monitor (answered nothing_to_stop) after this long without commands; 0 disables"`
	StallPeriods  int           `envconfig:"OPENSTREAM_STALL_PERIODS" default:"10" desc:"a monitor connection without data for this many periods is stalled and reconnected"`
	StallMin      time.Duration `envconfig:"OPENSTREAM_STALL_MIN" default:"1s" desc:"lower bound of the stall timeout"`

	BackoffMin        time.Duration `envconfig:"OPENSTREAM_BACKOFF_MIN" default:"200ms" desc:"first delay after the immediate first reconnect; doubles per failed attempt"`
	BackoffMax        time.Duration `envconfig:"OPENSTREAM_BACKOFF_MAX" default:"10s" desc:"reconnect delay cap"`
	HealthyAfter      time.Duration `envconfig:"OPENSTREAM_HEALTHY_AFTER" default:"2s" desc:"a session that lived this long (and streamed, on a monitor connection) makes the next reconnect immediate again"`
	HandshakeRetryMin time.Duration `envconfig:"OPENSTREAM_HANDSHAKE_RETRY_MIN" default:"5s" desc:"delay after version_mismatch or handshake_rejected; doubles per refusal"`
	HandshakeRetryMax time.Duration `envconfig:"OPENSTREAM_HANDSHAKE_RETRY_MAX" default:"30s" desc:"cap of the handshake refusal delay"`
	ControlQueue      int           `envconfig:"OPENSTREAM_CONTROL_QUEUE" default:"256" desc:"CONTROL commands waiting to be written per robot; a full queue blocks the command handler"`
	HighLane          int           `envconfig:"OPENSTREAM_HIGH_LANE" default:"1024" desc:"high-lane capacity per robot (acks, errors, status)"`
	LowLane           int           `envconfig:"OPENSTREAM_LOW_LANE" default:"8192" desc:"low-lane capacity per robot (MONITOR data); oldest dropped when full"`
}

// RobotConfig is one robot: its address, initial monitors and CONTROL allow-list.
type RobotConfig struct {
	Name string
	Addr string // host:port
	// Monitors are the MONITORs started on the first start (later the KV wins).
	Monitors map[string]Recipe
	// ControlAllow holds path.Match patterns; empty disables CONTROL.
	ControlAllow []string
}

// Recipe is one MONITOR: what the connector sends (and keeps in KV).
type Recipe struct {
	URL      string          `json:"url"`
	Method   string          `json:"method,omitempty"`
	PeriodMS int             `json:"period_ms"`
	Args     json.RawMessage `json:"args,omitempty"`
}

// LaneSizes returns the lane sizes of each robot's session (0 means the core's default).
func (c Config) LaneSizes() connector.LaneSizes {
	return connector.LaneSizes{High: c.HighLane, Low: c.LowLane}
}

// Defaults returns the configuration envconfig produces from an empty
// environment (the struct tags), for tests and programmatic use.
func Defaults() Config {
	var c Config
	if err := connector.Defaults(&c); err != nil {
		panic(err) // the tags are constants: a bad one fails every test at once
	}
	return c
}

func env(name string) string { return EnvPrefix + "_" + name }

// Validate checks every field; the error names the variable.
func (c Config) Validate() error {
	if _, err := c.ParseRobots(); err != nil {
		return err
	}
	type check struct {
		name string
		ok   bool
		want string
	}
	for _, k := range []check{
		{"MAJOR", c.Major >= 0, ">= 0"},
		{"MAX_LINE", c.MaxLine >= 1024 && c.MaxLine <= maxLineLimit, "between 1024 and 1032192 (a line is published as one NATS message: NATS's default max_payload is 1 MiB, less room for headers)"},
		{"READ_COALESCE", c.ReadCoalesce >= 0 && c.ReadCoalesce <= 20*time.Millisecond, "between 0 and 20ms (it delays every line)"},
		{"DIAL_TIMEOUT", c.DialTimeout > 0, "> 0"},
		{"TCP_KEEPALIVE", c.TCPKeepAlive >= 0, ">= 0"},
		{"WRITE_TIMEOUT", c.WriteTimeout > 0, "> 0"},
		{"ACK_TIMEOUT", c.AckTimeout > 0, "> 0"},
		{"CONTROL_ERR_WINDOW", c.ControlWindow >= 0 && c.ControlWindow <= 5*time.Second, "between 0 and 5s"},
		{"STOP_TIMEOUT", c.StopTimeout >= 0, ">= 0"},
		{"KEEPALIVE", c.Keepalive >= 0, ">= 0 (0 disables)"},
		{"KEEPALIVE_MODE", c.KeepaliveMode == KeepaliveStop || c.KeepaliveMode == KeepaliveMonitor, `"stop" or "monitor"`},
		{"IDLE_KEEPALIVE", c.IdleKeepalive >= 0, ">= 0 (0 disables)"},
		{"STALL_PERIODS", c.StallPeriods >= 1, ">= 1"},
		{"STALL_MIN", c.StallMin > 0, "> 0"},
		{"BACKOFF_MIN", c.BackoffMin > 0, "> 0"},
		{"BACKOFF_MAX", c.BackoffMax >= c.BackoffMin, ">= OPENSTREAM_BACKOFF_MIN"},
		{"HEALTHY_AFTER", c.HealthyAfter >= 0, ">= 0"},
		{"HANDSHAKE_RETRY_MIN", c.HandshakeRetryMin > 0, "> 0"},
		{"HANDSHAKE_RETRY_MAX", c.HandshakeRetryMax >= c.HandshakeRetryMin, ">= OPENSTREAM_HANDSHAKE_RETRY_MIN"},
		{"CONTROL_QUEUE", c.ControlQueue >= 1, ">= 1"},
		{"HIGH_LANE", c.HighLane >= 0, ">= 0 (0 = default)"},
		{"LOW_LANE", c.LowLane >= 0, ">= 0 (0 = default)"},
	} {
		if !k.ok {
			return fmt.Errorf("%s: must be %s", env(k.name), k.want)
		}
	}
	return nil
}

// ParseRobots parses Robots, Monitors and ControlAllow into one RobotConfig per
// robot, sorted by name. Errors name the variable.
func (c Config) ParseRobots() ([]RobotConfig, error) {
	robots := map[string]*RobotConfig{}
	var order []string
	for _, item := range splitList(c.Robots, ",") {
		name, addr, ok := strings.Cut(item, "=")
		name, addr = strings.TrimSpace(name), strings.TrimSpace(addr)
		if !ok || addr == "" {
			return nil, fmt.Errorf("%s: %q is not name=host[:port]", env("ROBOTS"), item)
		}
		if !validName(name) {
			return nil, fmt.Errorf("%s: robot name %q may hold only letters, digits, '-' and '_'", env("ROBOTS"), name)
		}
		if _, dup := robots[name]; dup {
			return nil, fmt.Errorf("%s: robot %q is listed twice", env("ROBOTS"), name)
		}
		hostport, err := withDefaultPort(addr)
		if err != nil {
			return nil, fmt.Errorf("%s: robot %q: %w", env("ROBOTS"), name, err)
		}
		robots[name] = &RobotConfig{Name: name, Addr: hostport, Monitors: map[string]Recipe{}}
		order = append(order, name)
	}

	monitors, err := parseMonitors(c.Monitors)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", env("MONITORS"), err)
	}
	for robot, ms := range monitors {
		rc, ok := robots[robot]
		if !ok {
			return nil, fmt.Errorf("%s: robot %q is not in %s", env("MONITORS"), robot, env("ROBOTS"))
		}
		for name, r := range ms {
			if !validName(name) {
				return nil, fmt.Errorf("%s: monitor name %q of robot %q may hold only letters, digits, '-' and '_'", env("MONITORS"), name, robot)
			}
			norm, _, cerr := r.normalize()
			if cerr != nil {
				return nil, fmt.Errorf("%s: %s/%s: %s", env("MONITORS"), robot, name, cerr.Message)
			}
			rc.Monitors[name] = norm
		}
	}

	allow, err := parseAllow(c.ControlAllow)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", env("CONTROL_ALLOW"), err)
	}
	for robot, patterns := range allow {
		rc, ok := robots[robot]
		if !ok {
			return nil, fmt.Errorf("%s: robot %q is not in %s", env("CONTROL_ALLOW"), robot, env("ROBOTS"))
		}
		rc.ControlAllow = patterns
	}

	sort.Strings(order)
	out := make([]RobotConfig, 0, len(order))
	for _, n := range order {
		out = append(out, *robots[n])
	}
	return out, nil
}

func splitList(s, sep string) []string {
	var out []string
	for _, p := range strings.Split(s, sep) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func withDefaultPort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// No port (or a bare IPv6 address): add the default.
		if strings.Contains(err.Error(), "missing port") {
			return net.JoinHostPort(strings.Trim(addr, "[]"), strconv.Itoa(DefaultPort)), nil
		}
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "" {
		return "", fmt.Errorf("address %q has no host", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("address %q: port must be 1..65535", addr)
	}
	return addr, nil
}

// parseMonitors reads robot/name=url@period items, or a JSON object
// {"robot":{"name":{"url":...,"period_ms":...,"args":{...}}}}.
func parseMonitors(s string) (map[string]map[string]Recipe, error) {
	s = strings.TrimSpace(s)
	out := map[string]map[string]Recipe{}
	if s == "" {
		return out, nil
	}
	if s[0] == '{' {
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&out); err != nil {
			return nil, fmt.Errorf("JSON form: %w", err)
		}
		return out, nil
	}
	for _, item := range splitList(s, ",") {
		key, spec, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not robot/name=url@period", item)
		}
		robot, name, hasName := strings.Cut(strings.TrimSpace(key), "/")
		if !hasName {
			name = DefaultMonitor
		}
		url, period, ok := strings.Cut(strings.TrimSpace(spec), "@")
		if !ok {
			return nil, fmt.Errorf("%q: period missing (url@2ms)", item)
		}
		ms, err := parsePeriod(period)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		if out[robot] == nil {
			out[robot] = map[string]Recipe{}
		}
		if _, dup := out[robot][name]; dup {
			return nil, fmt.Errorf("monitor %s/%s is listed twice", robot, name)
		}
		out[robot][name] = Recipe{URL: url, PeriodMS: ms}
	}
	return out, nil
}

// parsePeriod accepts "2", "2ms", "1s".
func parsePeriod(s string) (int, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(strings.TrimSuffix(s, "ms")); err == nil {
		return n, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d%time.Millisecond != 0 {
		return 0, fmt.Errorf("period %q is not a whole number of milliseconds", s)
	}
	return int(d / time.Millisecond), nil
}

// parseAllow reads robot=p1,p2;robot2=p3. An item without '=' continues the
// list of the robot before it, so robot=p1,p2,robot2=p3 also works.
func parseAllow(s string) (map[string][]string, error) {
	out := map[string][]string{}
	var current string
	for _, group := range splitList(s, ";") {
		for _, item := range splitList(group, ",") {
			if robot, pattern, ok := strings.Cut(item, "="); ok {
				current = strings.TrimSpace(robot)
				if _, dup := out[current]; dup {
					return nil, fmt.Errorf("robot %q is listed twice", current)
				}
				out[current] = nil
				item = strings.TrimSpace(pattern)
			} else if current == "" {
				return nil, fmt.Errorf("%q has no robot= in front", item)
			}
			if item == "" {
				continue
			}
			if !strings.HasPrefix(item, "/") {
				return nil, fmt.Errorf("pattern %q must start with '/'", item)
			}
			if _, err := path.Match(item, "/"); err != nil {
				return nil, fmt.Errorf("pattern %q: %w", item, err)
			}
			out[current] = append(out[current], item)
		}
		current = ""
	}
	for robot, p := range out {
		if len(p) == 0 {
			return nil, fmt.Errorf("robot %q has an empty allow-list (omit it to disable CONTROL)", robot)
		}
	}
	return out, nil
}

// validName: monitor and robot names become subject tokens and KV key parts.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// Period limits of MONITOR (the server clamps; so do we, and say so).
const (
	MinPeriodMS = 2
	MaxPeriodMS = 30000
	maxURLLen   = 2048
)

// normalize validates a recipe like the server does and clamps period_ms.
// It reports whether the period was clamped.
func (r Recipe) normalize() (Recipe, bool, *connector.CommandError) {
	if err := checkURL(r.URL); err != nil {
		return r, false, err
	}
	if r.Method == "" {
		r.Method = "GET"
	}
	if r.Method != "GET" {
		return r, false, connector.Refuse("invalid_method", "MONITOR method must be GET, not %q", r.Method)
	}
	clamped := false
	if r.PeriodMS < MinPeriodMS {
		r.PeriodMS, clamped = MinPeriodMS, true
	} else if r.PeriodMS > MaxPeriodMS {
		r.PeriodMS, clamped = MaxPeriodMS, true
	}
	args, err := compactJSON(r.Args, false, "invalid_args", "args")
	if err != nil {
		return r, false, err
	}
	r.Args = args
	return r, clamped, nil
}

// checkURL applies the server's rules: starts with '/', no whitespace, at most
// 2048 bytes; control characters are refused as well.
func checkURL(u string) *connector.CommandError {
	switch {
	case u == "":
		return connector.Refuse("missing_url", "url is required")
	case len(u) > maxURLLen:
		return connector.Refuse("url_too_long", "url is %d bytes; at most %d", len(u), maxURLLen)
	case u[0] != '/':
		return connector.Refuse("invalid_url", "url must start with '/'")
	}
	for _, r := range u {
		if r <= ' ' || r == 0x7f || r == 0x85 || r == 0xA0 {
			return connector.Refuse("invalid_url", "url may not contain spaces or control characters")
		}
	}
	return nil
}

// compactJSON checks that raw is absent, null, a JSON object or (with
// arrays) a JSON array, and returns it compacted (nil when absent or null),
// so that what is stored and sent upstream is the value, never the
// requester's layout. A refusal carries code and names field.
func compactJSON(raw json.RawMessage, arrays bool, code, field string) (json.RawMessage, *connector.CommandError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	switch {
	case raw[0] == '{':
	case raw[0] == '[' && arrays:
	case arrays:
		return nil, connector.Refuse(code, "%s must be a JSON object or array", field)
	default:
		return nil, connector.Refuse(code, "%s must be a JSON object", field)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, connector.Refuse(code, "%s: %v", field, err)
	}
	return b.Bytes(), nil
}
