package openstream

import (
	"io"
	"time"
)

// coalescingReader waits before a read that follows one that drained the
// socket, so that a monitor streaming a line every 2 ms hands over several
// lines per read system call instead of one (each one also a netpoll
// wake-up). A read that filled the buffer did not drain the socket: the
// next one goes at once, so a reader behind its peer never waits.
type coalescingReader struct {
	r       io.Reader
	wait    time.Duration
	drained bool
}

func (c *coalescingReader) Read(p []byte) (int, error) {
	if c.drained {
		time.Sleep(c.wait)
	}
	n, err := c.r.Read(p)
	c.drained = n < len(p)
	return n, err
}

// socketReader is what a session's line reader reads: the connection, with
// reads coalesced by wait when it is positive.
func socketReader(r io.Reader, wait time.Duration) io.Reader {
	if wait <= 0 {
		return r
	}
	return &coalescingReader{r: r, wait: wait}
}
