package sim

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jetbridge/connector/connector/openstream/ndjson"
)

// Watchdog rules for an armed session (one with an active MONITOR). PROTOCOLS.md says the
// server cleans up "if streaming stalls or the client sends no meaningful command for that long";
// the vendor's Korean page only mentions the stall, and the vendor's 10-hour MONITOR-only test
// implies a client that sends nothing is not cut off. Both readings are available.
const (
	// WatchdogStrict closes an armed session when the client sent no meaningful command for
	// ArmedTimeout, or when no data line could be delivered for ArmedTimeout. Default.
	WatchdogStrict = "strict"
	// WatchdogStream closes an armed session only when no data line could be delivered for
	// ArmedTimeout (the client stopped reading, or the stream stalled); a silent client that keeps
	// reading is kept.
	WatchdogStream = "stream"
)

// Clocks for the "ts" field of data events. The vendor's docs show both epoch milliseconds
// (1730000000000) and small values (402, 1000) that look like milliseconds since the MONITOR
// started.
const (
	TSEpoch   = "epoch"   // Unix milliseconds (default)
	TSMonitor = "monitor" // milliseconds since the MONITOR started
)

// Config configures a Server. The zero value of a field means its default (see DefaultConfig),
// except where noted; a negative timeout disables that watchdog limit. All faults are off by
// default.
type Config struct {
	// Addr is the listen address used by Start("") (default "127.0.0.1:49000", the vendor's
	// port on loopback; pass "0.0.0.0:49000" or ":49000" to accept other hosts).
	Addr string
	// Version is the protocol version MAJOR.MINOR.PATCH reported in handshake_ack (default
	// "1.0.0"); HANDSHAKE must send its MAJOR.
	Version string
	MaxLine int // longest accepted command line in bytes; longer ones get rx_buf_overflow (default 64 KiB)

	IdleTimeout  time.Duration // watchdog limit without an active MONITOR (default 180 s; <0 off)
	ArmedTimeout time.Duration // watchdog limit with an active MONITOR (default 5 s; <0 off)
	Watchdog     string        // WatchdogStrict (default) or WatchdogStream
	// LingerTimeout bounds how long a server-initiated close (STOP session, session_timeout,
	// refused connection) waits for the client to close its side after the server's FIN, so that
	// the last line is not destroyed by a TCP reset (default 1 s).
	LingerTimeout time.Duration

	TSClock          string // TSEpoch (default) or TSMonitor
	EchoID           bool   // copy the MONITOR payload's "id" into every data event, as the vendor's example output shows
	MonitorExclusive bool   // refuse a second MONITOR with monitor_already_active instead of replacing the first
	MotorOffAtStart  bool   // start with motors off (default: on, so the vendor's CONTROL example moves the robot)
	HTTPAddr         string // if set, also serve the REST services over HTTP here, like the controller's port 8888
	MaxConns         int    // >0: refuse further connections with a handshake_rejected line, then close
	RecordLimit      int    // commands kept for Received (default 10000; <0 unlimited)

	Faults Faults
}

// Faults are misbehaviours to inject; all off by default.
type Faults struct {
	DropAfter       time.Duration // close every connection abruptly this long after accepting it
	DropEveryLines  int           // close a connection abruptly after it has sent this many data lines
	GarbageEvery    time.Duration // send a malformed line on every connection at this interval
	StallEvery      time.Duration // while a MONITOR streams, pause data every StallEvery ...
	StallFor        time.Duration // ... for StallFor (the connection stays open)
	AckAfterData    bool          // send monitor_ack after the first data event instead of before
	RejectHandshake bool          // answer every HANDSHAKE with handshake_rejected
	ControlBusy     bool          // answer every CONTROL with control_busy
	StopFailed      bool          // answer every STOP with stop_failed
	StopAckIdle     bool          // answer a STOP of an inactive target with stop_ack, not nothing_to_stop (an independent server does)
}

// DefaultAddr is the vendor example client's port, on loopback: a simulator
// accepts other hosts only when asked to (-addr 0.0.0.0:49000).
const DefaultAddr = "127.0.0.1:49000"

// DefaultConfig returns the defaults, suitable for RegisterFlags.
func DefaultConfig() Config {
	return Config{
		Addr:          DefaultAddr,
		Version:       "1.0.0",
		MaxLine:       ndjson.DefaultMaxLine,
		IdleTimeout:   180 * time.Second,
		ArmedTimeout:  5 * time.Second,
		Watchdog:      WatchdogStrict,
		LingerTimeout: time.Second,
		TSClock:       TSEpoch,
		RecordLimit:   10000,
	}
}

// RegisterFlags binds the configuration to fs, using the current values as defaults. Call it on
// DefaultConfig(). The flag names are listed in the package documentation.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "addr", c.Addr, "listen address (host:port; 0.0.0.0:PORT to accept other hosts)")
	fs.StringVar(&c.Version, "version", c.Version, "protocol version MAJOR.MINOR.PATCH; HANDSHAKE must send its MAJOR")
	fs.IntVar(&c.MaxLine, "max-line", c.MaxLine, "longest accepted command line in bytes (rx_buf_overflow beyond)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "watchdog limit without an active MONITOR (negative: off)")
	fs.DurationVar(&c.ArmedTimeout, "armed-timeout", c.ArmedTimeout, "watchdog limit with an active MONITOR (negative: off)")
	fs.StringVar(&c.Watchdog, "watchdog", c.Watchdog, "armed watchdog rule: strict (no client command or stalled stream) or stream (stalled stream only)")
	fs.DurationVar(&c.LingerTimeout, "linger", c.LingerTimeout, "how long a server-initiated close waits for the client's FIN")
	fs.StringVar(&c.TSClock, "ts", c.TSClock, "clock of data.ts: epoch (Unix ms) or monitor (ms since MONITOR start)")
	fs.BoolVar(&c.EchoID, "echo-id", c.EchoID, "echo the MONITOR payload's id in every data event")
	fs.BoolVar(&c.MonitorExclusive, "monitor-exclusive", c.MonitorExclusive, "refuse a second MONITOR (monitor_already_active) instead of replacing it")
	fs.BoolVar(&c.MotorOffAtStart, "motor-off", c.MotorOffAtStart, "start with motors off")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "also serve the REST services over HTTP on this address (e.g. 127.0.0.1:8888)")
	fs.IntVar(&c.MaxConns, "max-conns", c.MaxConns, "refuse connections beyond this many (0: unlimited)")
	fs.IntVar(&c.RecordLimit, "record-limit", c.RecordLimit, "received commands kept in memory (negative: unlimited)")
	f := &c.Faults
	fs.DurationVar(&f.DropAfter, "fault-drop-after", f.DropAfter, "fault: close every connection this long after accepting it")
	fs.IntVar(&f.DropEveryLines, "fault-drop-every", f.DropEveryLines, "fault: close a connection after it has sent this many data lines")
	fs.DurationVar(&f.GarbageEvery, "fault-garbage-every", f.GarbageEvery, "fault: send a malformed line at this interval")
	fs.DurationVar(&f.StallEvery, "fault-stall-every", f.StallEvery, "fault: pause MONITOR data every this long ...")
	fs.DurationVar(&f.StallFor, "fault-stall-for", f.StallFor, "fault: ... for this long")
	fs.BoolVar(&f.AckAfterData, "fault-ack-after-data", f.AckAfterData, "fault: send monitor_ack after the first data event")
	fs.BoolVar(&f.RejectHandshake, "fault-reject-handshake", f.RejectHandshake, "fault: answer HANDSHAKE with handshake_rejected")
	fs.BoolVar(&f.ControlBusy, "fault-control-busy", f.ControlBusy, "fault: answer CONTROL with control_busy")
	fs.BoolVar(&f.StopFailed, "fault-stop-failed", f.StopFailed, "fault: answer STOP with stop_failed")
	fs.BoolVar(&f.StopAckIdle, "fault-stop-ack-idle", f.StopAckIdle, "fault: answer a STOP of an inactive target with stop_ack instead of nothing_to_stop")
}

// Validate reports the first invalid setting.
func (c *Config) Validate() error {
	var errs []error
	if c.Version != "" {
		if _, err := parseMajor(c.Version); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MaxLine < 0 {
		errs = append(errs, fmt.Errorf("max-line %d: must be > 0", c.MaxLine))
	}
	if c.Watchdog != "" && c.Watchdog != WatchdogStrict && c.Watchdog != WatchdogStream {
		errs = append(errs, fmt.Errorf("watchdog %q: want %s or %s", c.Watchdog, WatchdogStrict, WatchdogStream))
	}
	if c.TSClock != "" && c.TSClock != TSEpoch && c.TSClock != TSMonitor {
		errs = append(errs, fmt.Errorf("ts %q: want %s or %s", c.TSClock, TSEpoch, TSMonitor))
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("max-conns %d: must be >= 0", c.MaxConns))
	}
	f := c.Faults
	if f.DropAfter < 0 || f.DropEveryLines < 0 || f.GarbageEvery < 0 || f.StallEvery < 0 || f.StallFor < 0 {
		errs = append(errs, errors.New("fault durations and counts must be >= 0"))
	}
	if (f.StallEvery > 0) != (f.StallFor > 0) {
		errs = append(errs, errors.New("fault-stall-every and fault-stall-for go together"))
	}
	return errors.Join(errs...)
}

// withDefaults fills zero fields with their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Addr == "" {
		c.Addr = d.Addr
	}
	if c.Version == "" {
		c.Version = d.Version
	}
	if _, err := parseMajor(c.Version); err != nil {
		c.Version = d.Version
	}
	if c.MaxLine <= 0 {
		c.MaxLine = d.MaxLine
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.ArmedTimeout == 0 {
		c.ArmedTimeout = d.ArmedTimeout
	}
	if c.Watchdog != WatchdogStream {
		c.Watchdog = WatchdogStrict
	}
	if c.LingerTimeout <= 0 {
		c.LingerTimeout = d.LingerTimeout
	}
	if c.TSClock != TSMonitor {
		c.TSClock = TSEpoch
	}
	if c.RecordLimit == 0 {
		c.RecordLimit = d.RecordLimit
	}
	return c
}

// parseMajor returns the MAJOR of a MAJOR.MINOR.PATCH version.
func parseMajor(v string) (int, error) {
	parts := strings.Split(v, ".")
	nums := make([]int, 0, 3)
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p == "" || (p[0] == '+') {
			break
		}
		nums = append(nums, n)
	}
	if len(parts) != 3 || len(nums) != 3 {
		return 0, fmt.Errorf("version %q: want MAJOR.MINOR.PATCH", v)
	}
	return nums[0], nil
}
