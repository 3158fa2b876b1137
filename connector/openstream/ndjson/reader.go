// Package ndjson is the newline-delimited JSON codec of the Hi6 Open Stream protocol, shared by
// the connector's session and by the simulator.
//
// Framing rules (PROTOCOLS.md section 2): one compact JSON object per line, UTF-8, terminated by
// "\n". TCP has no message boundaries, so the Reader accumulates bytes and splits on "\n".
package ndjson

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxLine is the default longest accepted line, excluding its "\n".
const DefaultMaxLine = 64 << 10

// prefixLen is how many bytes of an oversized or partial line errors keep for diagnostics.
const prefixLen = 64

// minBuf is the initial buffer size; the buffer grows on demand up to maxLine+1 so that idle
// connections with short lines stay small.
const minBuf = 4 << 10

var (
	// ErrLineTooLong matches (errors.Is) every *LineTooLongError.
	ErrLineTooLong = errors.New("ndjson: line too long")
	// ErrPartialLine matches (errors.Is) every *PartialLineError: the stream ended in the middle of
	// a line (the peer closed mid-line).
	ErrPartialLine = errors.New("ndjson: stream ended mid-line")
)

// LineTooLongError reports a line longer than the reader's maximum. The reader has already
// dropped the bytes it holds and skips the rest of that line, so the next Next call continues with
// the line after it.
type LineTooLongError struct {
	// Len is the number of bytes of the line seen when the overflow was detected: a lower bound of
	// its real length (the remainder is discarded without being counted, so that an endless line
	// cannot stall error reporting).
	Len int
	// Prefix is a copy of the first bytes of the line (at most 64), for logs.
	Prefix []byte
}

func (e *LineTooLongError) Error() string {
	return fmt.Sprintf("ndjson: line too long (%d+ bytes, starts %q)", e.Len, e.Prefix)
}

// Is makes errors.Is(err, ErrLineTooLong) true.
func (e *LineTooLongError) Is(target error) bool { return target == ErrLineTooLong }

// PartialLineError reports bytes after the last "\n" when the stream ended.
type PartialLineError struct {
	// Line is a copy of the unterminated bytes (not stripped of "\r").
	Line []byte
}

func (e *PartialLineError) Error() string {
	p := e.Line
	if len(p) > prefixLen {
		p = p[:prefixLen]
	}
	return fmt.Sprintf("ndjson: stream ended mid-line after %d bytes (starts %q)", len(e.Line), p)
}

// Is makes errors.Is(err, ErrPartialLine) true.
func (e *PartialLineError) Is(target error) bool { return target == ErrPartialLine }

// Reader splits a byte stream into lines. It is not safe for concurrent use.
//
// Next returns lines without their "\n" (and without a trailing "\r"), skipping empty lines. The
// returned slice aliases the Reader's internal buffer and is valid only until the next call to
// Next or Reset: copy it to keep it. In exchange the steady state allocates nothing per line.
type Reader struct {
	r       io.Reader
	max     int
	buf     []byte
	start   int   // first unconsumed byte in buf
	end     int   // end of valid data in buf
	scanned int   // bytes after start already known to hold no '\n'
	discard bool  // dropping the rest of an oversized line
	err     error // pending read error, reported once the buffer holds no complete line
}

// NewReader returns a Reader over r accepting lines of at most maxLine bytes (excluding "\n";
// a "\r" before it counts). maxLine <= 0 means DefaultMaxLine.
func NewReader(r io.Reader, maxLine int) *Reader {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	return &Reader{r: r, max: maxLine}
}

// Reset makes the Reader read from r, keeping its buffer for reuse.
func (d *Reader) Reset(r io.Reader) {
	d.r = r
	d.start, d.end, d.scanned = 0, 0, 0
	d.discard = false
	d.err = nil
}

// MaxLine reports the longest accepted line.
func (d *Reader) MaxLine() int { return d.max }

// Next returns the next non-empty line. Errors:
//   - *LineTooLongError (errors.Is ErrLineTooLong): the current line exceeds MaxLine. Not fatal:
//     call Next again to continue after that line.
//   - *PartialLineError (errors.Is ErrPartialLine): the stream ended with unterminated bytes.
//     A following call returns io.EOF.
//   - io.EOF at a clean end of stream (also after an oversized line that never ended), or the
//     underlying reader's error. Errors are not sticky: after a timeout (a net.Conn read
//     deadline) Next may be called again and continues the interrupted line.
func (d *Reader) Next() ([]byte, error) {
	for {
		if d.discard {
			if i := bytes.IndexByte(d.buf[d.start:d.end], '\n'); i >= 0 {
				d.start += i + 1
				d.discard = false
				continue
			}
			d.start, d.end = 0, 0
		} else if d.end > d.start {
			window := d.buf[d.start+d.scanned : d.end]
			if i := bytes.IndexByte(window, '\n'); i >= 0 {
				n := d.scanned + i // line length without '\n'
				line := d.buf[d.start : d.start+n]
				d.start += n + 1
				d.scanned = 0
				if n > d.max {
					return nil, tooLong(line, n)
				}
				if n > 0 && line[n-1] == '\r' {
					line = line[:n-1]
				}
				if len(line) == 0 {
					continue
				}
				return line, nil
			}
			d.scanned = d.end - d.start
			if d.scanned > d.max {
				err := tooLong(d.buf[d.start:d.end], d.scanned)
				d.start, d.end, d.scanned = 0, 0, 0
				d.discard = true
				return nil, err
			}
		}
		if d.err != nil {
			return nil, d.finish()
		}
		d.fill()
	}
}

// finish reports the pending read error once buffered complete lines are gone. The error is not
// sticky: after a timeout the next call reads again and continues the interrupted line.
func (d *Reader) finish() error {
	err := d.err
	d.err = nil
	if err != io.EOF {
		return err // buffered bytes are kept for a retry
	}
	if d.discard {
		d.discard = false
		return io.EOF // the oversized line was already reported
	}
	if d.end > d.start {
		p := &PartialLineError{Line: append([]byte(nil), d.buf[d.start:d.end]...)}
		d.start, d.end, d.scanned = 0, 0, 0
		return p
	}
	return io.EOF
}

// fill reads once into the buffer, compacting or growing it first when it is full.
func (d *Reader) fill() {
	if d.start > 0 && (d.start == d.end || d.end == len(d.buf)) {
		copy(d.buf, d.buf[d.start:d.end])
		d.end -= d.start
		d.start = 0
	}
	if d.end == len(d.buf) {
		// Room for max+1 bytes is enough to detect any oversized line.
		limit := d.max + 1
		n := 2 * len(d.buf)
		if n < minBuf {
			n = minBuf
		}
		if n > limit {
			n = limit
		}
		if n <= d.end { // cannot happen while start == 0 and end <= max, but stay safe
			n = d.end + minBuf
		}
		nb := make([]byte, n)
		copy(nb, d.buf[:d.end])
		d.buf = nb
	}
	// Retry a bounded number of empty reads, like bufio, instead of spinning forever.
	for i := 0; i < 100; i++ {
		n, err := d.r.Read(d.buf[d.end:])
		if n < 0 || n > len(d.buf)-d.end {
			d.err = errors.New("ndjson: reader returned invalid count")
			return
		}
		d.end += n
		if err != nil {
			d.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	d.err = io.ErrNoProgress
}

func tooLong(line []byte, n int) error {
	p := line
	if len(p) > prefixLen {
		p = p[:prefixLen]
	}
	return &LineTooLongError{Len: n, Prefix: append([]byte(nil), p...)}
}
