package connector

// Reconnect reason codes say, in one word, why an upstream connection ended.
// Each is the reason label of connector_upstream_reconnects_total and the
// detail.reason_code of the session's disconnected and reconnecting status
// (whose reason keeps the human explanation). Label values are series kept
// forever, so the set is small and fixed: these are the codes every source
// uses; a source adds a code of its own only for an ending that exists in its
// protocol alone (and documents it with the source). The values are part of
// the external contract (dashboards, alerts, README): never change one.
const (
	// ReasonDial: the connection could not be opened (DNS, TCP, or the network
	// failed during the TLS handshake), or the upstream refused it for another
	// reason than credentials.
	ReasonDial = "dial"
	// ReasonAuth: the upstream refused the credentials (an API key). Such a
	// refusal does not fix itself in seconds: sources retry it more slowly.
	ReasonAuth = "auth"
	// ReasonTLS: the TLS handshake with the upstream failed for a reason a
	// retry in seconds does not fix: its certificate is not trusted (unknown
	// authority), names another host, has expired or is not yet valid; the
	// server does not speak TLS; or one side refused the handshake (a TLS
	// alert: no common version or cipher suite). Nothing was sent upstream
	// (no credentials): sources retry it as slowly as ReasonAuth. A handshake
	// that merely stalls is ReasonHandshakeTimeout.
	ReasonTLS = "tls"
	// ReasonHandshakeTimeout: connected, but the upstream did not complete
	// its handshake in time.
	ReasonHandshakeTimeout = "handshake_timeout"
	// ReasonReadTimeout: nothing at all arrived for the source's read
	// timeout: a half-open connection or a hung upstream.
	ReasonReadTimeout = "read_timeout"
	// ReasonClosedByPeer: the upstream closed or reset the connection, seen
	// by a read or by a write that found it reset (WriteEndReason).
	ReasonClosedByPeer = "closed_by_peer"
	// ReasonProtocol: the upstream broke its protocol (an oversized or
	// invalid frame, an unexpected error), so the connection cannot go on.
	ReasonProtocol = "protocol"
	// ReasonWrite: a write timed out, found its queue full, or failed for
	// another reason than the upstream's reset (WriteEndReason).
	ReasonWrite = "write"
	// ReasonStopped: the connection was ended on purpose (shutdown, or a
	// session handed over to another replica).
	ReasonStopped = "stopped"
	// ReasonFenced: this replica could not confirm its lease on the session
	// in time (Host.Fence): the connection was closed before anything more
	// was written, and none is opened until the ownership is certain again.
	ReasonFenced = "fenced"
)
