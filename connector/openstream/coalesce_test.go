package openstream

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// countingReader counts the reads that reach the socket.
type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

// A peer writing a line every millisecond over loopback TCP: with reads
// coalesced by 5 ms, each read takes several lines; without, about one.
func TestCoalescedReadsTakeSeveralLines(t *testing.T) {
	for _, tc := range []struct {
		wait     time.Duration
		minLines float64 // lines per read, at least
		maxLines float64 // lines per read, at most
	}{{0, 0, 2}, {5 * time.Millisecond, 2.5, 1e9}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		const lines = 200
		line := append(bytes.Repeat([]byte("x"), 199), '\n')
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			for range lines {
				if _, err := c.Write(line); err != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		counted := &countingReader{r: c}
		r := socketReader(counted, tc.wait)
		n, err := io.Copy(io.Discard, r)
		c.Close()
		ln.Close()
		if err != nil || n != lines*int64(len(line)) {
			t.Fatalf("wait %v: read %d bytes, %v", tc.wait, n, err)
		}
		per := float64(lines) / float64(counted.reads)
		if per < tc.minLines || per > tc.maxLines {
			t.Errorf("wait %v: %.1f lines per read (%d reads), want %.1f to %.1f", tc.wait, per, counted.reads, tc.minLines, tc.maxLines)
		}
		t.Logf("wait %v: %d lines in %d reads (%.1f per read)", tc.wait, lines, counted.reads, per)
	}
}

// A read that fills the buffer did not empty the socket: the next read
// goes at once, so a reader behind its peer never waits.
func TestCoalescingNeverDelaysAReaderThatIsBehind(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB buffered
	r := socketReader(bytes.NewReader(data), time.Second)
	buf := make([]byte, 16)
	start := time.Now()
	for range len(data) / len(buf) {
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("reading 1 KiB already buffered took %v with a 1 s coalescing wait", took)
	}
}
