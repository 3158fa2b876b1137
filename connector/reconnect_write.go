package connector

import (
	"errors"
	"syscall"
)

// WriteEndReason is the reason code of a connection that ended because a
// write to the upstream failed. A write that finds the connection reset or
// its other end gone (ECONNRESET, EPIPE) is the upstream closing it, which a
// write merely noticed before the reader did: ReasonClosedByPeer, the same
// code the reader would have given a moment later. Any other failure (a
// timeout, a full queue, a local error) is ReasonWrite.
func WriteEndReason(err error) string {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return ReasonClosedByPeer
	}
	return ReasonWrite
}
