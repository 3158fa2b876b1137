package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const waitLong = 5 * time.Second

// echoServer echoes every connection; it counts the connections it accepted.
type echoServer struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln}
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			e.mu.Lock()
			e.conns = append(e.conns, c)
			e.mu.Unlock()
			e.wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		e.mu.Lock()
		for _, c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

func startProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target, 42)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readN reads exactly n bytes within timeout.
func readN(t *testing.T, c net.Conn, n int, timeout time.Duration) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return buf
}

// expectSilence asserts that nothing arrives for d and the connection stays open.
func expectSilence(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, err := c.Read(b[:])
	var ne net.Error
	if n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want silence (read timeout), got %d bytes, err %v", n, err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestForwardsBothWays(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	c := dial(t, p)
	msg := bytes.Repeat([]byte("0123456789"), 10000)
	go func() { _, _ = c.Write(msg) }()
	if got := readN(t, c, len(msg), waitLong); !bytes.Equal(got, msg) {
		t.Fatal("echo differs from what was sent")
	}
	// The counters move after each write returns, so they may trail the bytes
	// the client has already read by a moment.
	eventually(t, "forwarded counters to reach the message size", func() bool {
		return p.Forwarded(Upstream) == int64(len(msg)) && p.Forwarded(Downstream) == int64(len(msg))
	})
	if p.Accepted() != 1 || p.Active() != 1 {
		t.Fatalf("accepted %d active %d, want 1 and 1", p.Accepted(), p.Active())
	}
}

func TestCutClosesEveryConnection(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	a, b := dial(t, p), dial(t, p)
	eventually(t, "two links", func() bool { return p.Active() == 2 })
	if n := p.Cut(false); n != 2 {
		t.Fatalf("Cut closed %d connections, want 2", n)
	}
	for _, c := range []net.Conn{a, b} {
		_ = c.SetReadDeadline(time.Now().Add(waitLong))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("after Cut: want EOF, got %v", err)
		}
	}
	// New connections still work.
	c := dial(t, p)
	_, _ = c.Write([]byte("x"))
	if got := readN(t, c, 1, waitLong); string(got) != "x" {
		t.Fatalf("after Cut, a new connection echoed %q", got)
	}
}

func TestCutWithResetGivesECONNRESET(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	c := dial(t, p)
	eventually(t, "link", func() bool { return p.Active() == 1 })
	p.Cut(true)
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after Cut(rst): want ECONNRESET, got %v", err)
	}
}

func TestStallKeepsTheConnectionOpenUntilResume(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	c := dial(t, p)
	_, _ = c.Write([]byte("before"))
	readN(t, c, 6, waitLong)

	p.Stall(Both)
	_, _ = c.Write([]byte("during"))
	// No data and no FIN: the client cannot tell a stall from a quiet peer.
	expectSilence(t, c, 200*time.Millisecond)
	p.Resume()
	if got := readN(t, c, 6, waitLong); string(got) != "during" {
		t.Fatalf("after Resume got %q", got)
	}
}

func TestStallOneDirection(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	c := dial(t, p)
	p.Stall(Downstream)
	_, _ = c.Write([]byte("ping"))
	// Upstream still flows: the echo server receives the bytes.
	eventually(t, "upstream bytes", func() bool { return p.Forwarded(Upstream) == 4 })
	expectSilence(t, c, 100*time.Millisecond)
	p.Resume()
	if got := readN(t, c, 4, waitLong); string(got) != "ping" {
		t.Fatalf("got %q", got)
	}
}

func TestStallAfterForwardsExactlyTheBudget(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	p.StallAfter(Downstream, 5) // applies to new connections from their first byte
	c := dial(t, p)
	_, _ = c.Write([]byte(`{"type":"data","x":1}` + "\n"))
	if got := readN(t, c, 5, waitLong); string(got) != `{"typ` {
		t.Fatalf("got %q", got)
	}
	expectSilence(t, c, 150*time.Millisecond)
	p.Resume()
	if got := readN(t, c, 17, waitLong); string(got) != `e":"data","x":1}`+"\n" {
		t.Fatalf("rest after Resume: %q", got)
	}
	// A budget set later counts from then on current connections.
	p.StallAfter(Downstream, 2)
	_, _ = c.Write([]byte("abcd"))
	if got := readN(t, c, 2, waitLong); string(got) != "ab" {
		t.Fatalf("got %q", got)
	}
	expectSilence(t, c, 100*time.Millisecond)
}

func TestBlackholeAcceptsButNeverAnswers(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	p.Blackhole(true)
	c := dial(t, p)
	if _, err := c.Write(bytes.Repeat([]byte("x"), 100000)); err != nil {
		t.Fatalf("writes to a black hole must be accepted: %v", err)
	}
	expectSilence(t, c, 150*time.Millisecond)
	if e.accepted.Load() != 0 {
		t.Fatal("a black-holed connection reached the target")
	}
	p.Blackhole(false)
	c2 := dial(t, p)
	_, _ = c2.Write([]byte("y"))
	readN(t, c2, 1, waitLong)
	if p.Cut(false) != 2 {
		t.Fatal("Cut must close the held connection too")
	}
}

func TestRefuseClosesNewConnections(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	p.Refuse(true)
	c := dial(t, p)
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a refused connection must be closed")
	}
	if e.accepted.Load() != 0 || p.Accepted() != 1 {
		t.Fatalf("target accepted %d, proxy %d; want 0 and 1", e.accepted.Load(), p.Accepted())
	}
	p.Reset()
	c2 := dial(t, p)
	_, _ = c2.Write([]byte("z"))
	readN(t, c2, 1, waitLong)
}

func TestSlowLimitsTheRate(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	const rate, size = 20000, 10000 // half a second at the limit
	p.Slow(Downstream, rate, 0)
	c := dial(t, p)
	msg := bytes.Repeat([]byte("s"), size)
	start := time.Now()
	go func() { _, _ = c.Write(msg) }()
	got := readN(t, c, size, waitLong)
	elapsed := time.Since(start)
	if !bytes.Equal(got, msg) {
		t.Fatal("slow link changed the bytes")
	}
	// The last piece's pause may fall after the read: allow one piece less.
	if minD := time.Duration((size - rate/20) * int64(time.Second) / rate); elapsed < minD {
		t.Fatalf("%d bytes at %d B/s took %s, want >= %s", size, rate, elapsed, minD)
	}
	p.Slow(Both, 0, 0)
	start = time.Now()
	_, _ = c.Write(msg)
	readN(t, c, size, waitLong)
	if time.Since(start) > 400*time.Millisecond {
		t.Fatalf("after lifting Slow the transfer took %s", time.Since(start))
	}
}

func TestSlowPerChunkDelay(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	p.Slow(Downstream, 0, 100*time.Millisecond)
	c := dial(t, p)
	start := time.Now()
	_, _ = c.Write([]byte("a"))
	readN(t, c, 1, waitLong)
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("chunk arrived after %s, want >= 100ms", d)
	}
}

// corruptedEcho sends msg through a fresh proxy with seed and rate corruption.
func corruptedEcho(t *testing.T, target string, seed uint64, rate float64, msg []byte) []byte {
	t.Helper()
	p, err := New(target, seed)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Corrupt(Downstream, rate)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() { _, _ = c.Write(msg) }()
	return readN(t, c, len(msg), waitLong)
}

func TestCorruptIsSeededAndDeterministic(t *testing.T) {
	e := startEcho(t)
	msg := bytes.Repeat([]byte(`{"type":"pnl_update","position_id":1}`+"\n"), 200)
	a := corruptedEcho(t, e.addr(), 7, 0.01, msg)
	b := corruptedEcho(t, e.addr(), 7, 0.01, msg)
	c := corruptedEcho(t, e.addr(), 8, 0.01, msg)
	if !bytes.Equal(a, b) {
		t.Fatal("same seed, same traffic: corruption must be identical")
	}
	if bytes.Equal(a, c) {
		t.Fatal("a different seed must corrupt differently")
	}
	diff := 0
	for i := range msg {
		if a[i] != msg[i] {
			diff++
		}
	}
	// 7400 bytes at 1%: expect about 74; a wide band still proves the rate is applied.
	if diff < 20 || diff > 200 {
		t.Fatalf("%d of %d bytes corrupted at rate 0.01", diff, len(msg))
	}
	if got := corruptedEcho(t, e.addr(), 7, 0, msg); !bytes.Equal(got, msg) {
		t.Fatal("rate 0 must not corrupt")
	}
}

func TestCorruptAtOffsets(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	p.CorruptAt(Downstream, 0, 3)
	c := dial(t, p)
	_, _ = c.Write([]byte("abcdef"))
	got := readN(t, c, 6, waitLong)
	want := []byte{'a' ^ 0xFF, 'b', 'c', 'd' ^ 0xFF, 'e', 'f'}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestSetTargetAppliesToNewConnections(t *testing.T) {
	e1, e2 := startEcho(t), startEcho(t)
	p := startProxy(t, e1.addr())
	c1 := dial(t, p)
	_, _ = c1.Write([]byte("1"))
	readN(t, c1, 1, waitLong)
	p.SetTarget(e2.addr())
	c2 := dial(t, p)
	_, _ = c2.Write([]byte("2"))
	readN(t, c2, 1, waitLong)
	if e1.accepted.Load() != 1 || e2.accepted.Load() != 1 {
		t.Fatalf("targets accepted %d and %d, want 1 each", e1.accepted.Load(), e2.accepted.Load())
	}
}

func TestHalfCloseIsPassedOn(t *testing.T) {
	e := startEcho(t)
	p := startProxy(t, e.addr())
	c := dial(t, p)
	_, _ = c.Write([]byte("bye"))
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The echo server sees EOF, finishes echoing and closes: we get the bytes, then EOF.
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestCloseStopsEveryGoroutine(t *testing.T) {
	e := startEcho(t)
	before := runtime.NumGoroutine()
	p, err := New(e.addr(), 1)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	p.Stall(Both)
	p.Blackhole(true)
	h, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, h)
	eventually(t, "4 connections", func() bool { return p.Active() == 4 })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(waitLong))
		if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Fatalf("after Close a client connection is still open: %v", err)
		}
		c.Close()
	}
	// Close waited for the proxy's goroutines; the echo server's end with their sockets.
	eventually(t, "goroutines back to the start", func() bool { return runtime.NumGoroutine() <= before+1 })
	if _, err := net.DialTimeout("tcp", p.Addr(), 200*time.Millisecond); err == nil {
		t.Fatal("the listener is still open after Close")
	}
}
