// Package openstream is the connector source for Hyundai Robotics Hi6 "Open
// Stream" controllers (TCP, NDJSON; PROTOCOLS.md section 2). One *Robot is one
// connector.Source.
//
// # Connections
//
// The protocol allows one MONITOR per TCP connection, so a robot owns one
// connection per named monitor ("monitor/<name>") plus, when CONTROL is
// allowed for it, one "control" connection that carries CONTROL and STOP
// control. This assumes the controller accepts that many concurrent sessions;
// a controller that refuses one (handshake_rejected, a closed socket) shows it
// as a "reconnecting" status of that connection with the reason, while the
// others keep streaming. Each connection runs connect (TCP_NODELAY, TCP
// keep-alive, dial timeout) -> HANDSHAKE {major} -> MONITOR (the desired
// recipe) -> stream, with one reader goroutine (routes every line by "type",
// or by "error" when there is none) and one writer goroutine whose queue lets
// CONTROL overtake anything waiting.
//
// # Keep-alive
//
// A strict controller closes an armed session (MONITOR active) after about
// 5 s without a meaningful command, even while data flows. Every
// OPENSTREAM_KEEPALIVE (2 s) without another command written, a monitor
// connection sends STOP control: no CONTROL is ever active there, so the
// controller acts on it and answers nothing_to_stop, which counts as activity
// (the simulator's rule: any valid command it acted on) and leaves the stream
// alone. Re-sending the MONITOR would work too (OPENSTREAM_KEEPALIVE_MODE=
// monitor) but restarts the stream (first data at once), which distorts
// periods longer than the interval, so it is the fallback for controllers that
// do not count nothing_to_stop. The control connection (180 s unarmed
// watchdog) sends STOP monitor every OPENSTREAM_IDLE_KEEPALIVE (120 s) without
// commands; it never sends STOP control, which would clear a queued
// trajectory. The expected answers to keepalives (nothing_to_stop, monitor_ack)
// are consumed instead of published; any other answer is published.
//
// # Reconnects
//
// EOF, a write error, session_timeout / stop_failed / handshake_required, and
// a stall (no data for STALL_PERIODS periods, at least STALL_MIN) end the
// session. The first reconnect is immediate; consecutive failures back off
// exponentially from BACKOFF_MIN to BACKOFF_MAX; a session that lived
// HEALTHY_AFTER (and streamed) resets that. version_mismatch and
// handshake_rejected wait HANDSHAKE_RETRY_MIN, doubling to HANDSHAKE_RETRY_MAX.
// Statuses on openstream.<robot>.status: connecting, connected (version,
// handshake RTT), streaming (first data of a session; detail.gap_ms = time
// without data across the reconnect), reconnecting (reason, attempt,
// backoff_ms, detail.since_data_ms), stopped, idle. detail.connections shows
// the state of every connection of the robot.
//
// # Desired state
//
// Desired monitors live in KV bucket CONNECTOR_DESIRED under
// openstream.<robot>.monitor.<name>. On the very first start the configured
// monitors are stored and a marker key openstream.<robot>.seeded is written;
// from then on KV wins and the environment's monitors are not read again, so
// monitors added or stopped by command survive restarts. A monitor command
// stores its recipe before sending it; the controller refusing it restores the
// previous recipe (or drops the new monitor); a timeout keeps it, and it is
// applied on every (re)connect.
//
// # Commands (openstream.<robot>.cmd.<command>)
//
//   - monitor {name?="default", url, period_ms, args?, method?="GET"}: validated
//     like the controller (period clamped to 2..30000, reported as
//     clamped_from); starts or replaces that monitor; replies after monitor_ack
//     or the controller's error code.
//   - control {url, method POST|PUT|DELETE, body?, args?}: refused with
//     control_disabled (no allow-list) or control_not_allowed (no pattern
//     matches; URLs with '?', '#', '%', '\', empty, '.' or '..' segments are
//     invalid_url so patterns cannot be bypassed); queued ahead of everything
//     else. With a reply subject it answers once written, after the
//     CONTROL_ERR_WINDOW passed without a control_err (or a CONTROL error
//     line, e.g. control_busy), which is otherwise the refusal. A plain publish
//     does not wait (trajectory streaming). The protocol cannot tell which
//     CONTROL a control_err belongs to; it is given to the oldest CONTROL with
//     a reply still inside its window.
//   - stop {target monitor|control|session, name? for monitor}: monitor sends
//     STOP monitor on that connection, removes it from KV and closes the
//     connection; control answers stop_ack (nothing_to_stop is ok with
//     nothing_to_stop:true); session ends every connection of the robot (STOP
//     session, stop_ack, close) and leaves the robot stopped (status
//     "stopped", CONTROL refused with session_stopped) until a monitor command
//     resumes every desired monitor, or the process restarts. Desired monitors
//     are kept.
//
// Every outgoing command is re-encoded compactly by package ndjson, so a
// newline in a request can never start a second command.
package openstream
