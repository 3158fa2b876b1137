// Package faultproxy is a loopback TCP proxy for tests that injects network
// faults between a client and a server: abrupt cuts (FIN or RST), stalls that
// keep the sockets open (half-open peers), black holes, refusals, slow links,
// stalls after a byte budget (mid-frame) and corrupted bytes.
//
// Every control applies at once to the current connections and to the ones
// accepted later, until it is lifted (Resume, Reset or the control with its
// zero value). Random corruption is seeded: the same seed, traffic and
// controls corrupt the same bytes. Close stops every goroutine the proxy
// started and closes every socket it holds.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direction selects which way of a connection a control applies to.
type Direction uint8

const (
	// Upstream is client to server.
	Upstream Direction = 1 << iota
	// Downstream is server to client.
	Downstream
	// Both is both ways.
	Both = Upstream | Downstream
)

// single splits d into its single directions.
func (d Direction) single() []Direction {
	var out []Direction
	for _, x := range [...]Direction{Upstream, Downstream} {
		if d&x != 0 {
			out = append(out, x)
		}
	}
	return out
}

func dirIndex(d Direction) int {
	if d == Downstream {
		return 1
	}
	return 0
}

func (d Direction) String() string {
	switch d {
	case Upstream:
		return "upstream"
	case Downstream:
		return "downstream"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// noBudget marks a direction without a StallAfter budget.
const noBudget = -1

// dirFaults are the faults of one direction.
type dirFaults struct {
	stalled     bool
	stallAfter  int64 // >= 0: bytes a new connection may forward before it stalls; noBudget = off
	rate        int64 // bytes per second; 0 = unlimited
	chunkDelay  time.Duration
	corruptRate float64 // probability that a byte is corrupted
	corruptAt   map[int64]struct{}
}

// Proxy forwards every connection accepted on its loopback listener to the
// target. Build it with New.
type Proxy struct {
	ln   net.Listener
	seed uint64
	ctx  context.Context // ends at Close
	stop context.CancelFunc
	wg   sync.WaitGroup

	accepted atomic.Int64
	forward  [2]atomic.Int64 // bytes forwarded, by dirIndex

	mu        sync.Mutex
	target    string
	refuse    bool
	blackhole bool
	faults    [2]dirFaults
	links     map[*link]struct{}
	holes     map[net.Conn]struct{}
	// changed is closed (and replaced) on every control change: forwarding
	// goroutines waiting for a fault to lift re-check then.
	changed chan struct{}
	nextID  uint64
	closed  bool
}

// New listens on 127.0.0.1 (a free port) and forwards to target (host:port).
// seed makes random corruption reproducible.
func New(target string, seed uint64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy listen: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &Proxy{
		ln: ln, seed: seed, ctx: ctx, stop: stop, target: target,
		links: map[*link]struct{}{}, holes: map[net.Conn]struct{}{},
		changed: make(chan struct{}),
	}
	for i := range p.faults {
		p.faults[i].stallAfter = noBudget
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's listen address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Accepted counts the TCP connections accepted so far, refused and
// black-holed ones included: the client's connection attempts.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Forwarded counts the bytes forwarded in one direction (Upstream or
// Downstream) over all connections.
func (p *Proxy) Forwarded(d Direction) int64 { return p.forward[dirIndex(d)].Load() }

// Active counts the connections currently forwarding or black-holed.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links) + len(p.holes)
}

// SetTarget changes where new connections are forwarded; current ones stay.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Cut closes every current connection abruptly, both sockets; with rst the
// closes are resets (SO_LINGER 0) instead of FINs. New connections are not
// affected.
func (p *Proxy) Cut(rst bool) int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	holes := make([]net.Conn, 0, len(p.holes))
	for c := range p.holes {
		holes = append(holes, c)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.shut(rst)
	}
	for _, c := range holes {
		closeConn(c, rst)
	}
	return len(links) + len(holes)
}

// Stall stops forwarding in d, keeping the sockets open (no FIN): to the
// peers, a half-open connection. It lasts until Resume or Reset.
func (p *Proxy) Stall(d Direction) {
	p.update(d, func(f *dirFaults) { f.stalled = true })
}

// StallAfter lets every current connection forward n more bytes in d, and
// every new connection its first n bytes, then stalls d (mid-frame when n
// falls inside one). It lasts until Resume or Reset.
func (p *Proxy) StallAfter(d Direction, n int64) {
	n = max(n, 0)
	p.mu.Lock()
	for _, dd := range d.single() {
		i := dirIndex(dd)
		p.faults[i].stallAfter = n
		for l := range p.links {
			l.budget[i] = n
		}
	}
	p.notifyLocked()
	p.mu.Unlock()
}

// Slow limits d to bytesPerSec (0: unlimited) and waits perChunk before
// forwarding each chunk (0: no delay). Slow(d, 0, 0) lifts it.
func (p *Proxy) Slow(d Direction, bytesPerSec int64, perChunk time.Duration) {
	p.update(d, func(f *dirFaults) { f.rate, f.chunkDelay = max(bytesPerSec, 0), max(perChunk, 0) })
}

// Corrupt replaces each byte forwarded in d, with probability rate, by a
// different byte drawn from the seeded generator. Corrupt(d, 0) lifts it.
func (p *Proxy) Corrupt(d Direction, rate float64) {
	p.update(d, func(f *dirFaults) { f.corruptRate = min(max(rate, 0), 1) })
}

// CorruptAt inverts (XOR 0xFF) the bytes at these offsets of every
// connection's stream in d, counted from the connection's first byte in d.
// CorruptAt(d) without offsets lifts it.
func (p *Proxy) CorruptAt(d Direction, offsets ...int64) {
	p.update(d, func(f *dirFaults) {
		f.corruptAt = nil
		if len(offsets) > 0 {
			f.corruptAt = make(map[int64]struct{}, len(offsets))
			for _, o := range offsets {
				f.corruptAt[o] = struct{}{}
			}
		}
	})
}

// Blackhole makes new connections (on) be accepted and held open without
// ever reaching the target: what the client writes is read and discarded,
// nothing is answered. Held connections stay until Cut or Close.
func (p *Proxy) Blackhole(on bool) {
	p.mu.Lock()
	p.blackhole = on
	p.mu.Unlock()
}

// Refuse makes new connections (on) be closed as soon as they are accepted.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Resume lifts Stall and StallAfter in both directions.
func (p *Proxy) Resume() {
	p.mu.Lock()
	for i := range p.faults {
		p.faults[i].stalled = false
		p.faults[i].stallAfter = noBudget
	}
	for l := range p.links {
		l.budget = [2]int64{noBudget, noBudget}
	}
	p.notifyLocked()
	p.mu.Unlock()
}

// Reset lifts every fault: stalls, budgets, slowness, corruption, black hole
// and refusal. Connections already held by the black hole stay held.
func (p *Proxy) Reset() {
	p.mu.Lock()
	p.refuse, p.blackhole = false, false
	for i := range p.faults {
		p.faults[i] = dirFaults{stallAfter: noBudget}
	}
	for l := range p.links {
		l.budget = [2]int64{noBudget, noBudget}
	}
	p.notifyLocked()
	p.mu.Unlock()
}

// Close stops accepting, closes every connection and waits for every
// goroutine of the proxy to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.stop()
	err := p.ln.Close()
	p.Cut(false)
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (p *Proxy) update(d Direction, change func(*dirFaults)) {
	p.mu.Lock()
	for _, dd := range d.single() {
		change(&p.faults[dirIndex(dd)])
	}
	p.notifyLocked()
	p.mu.Unlock()
}

func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (e.g. too many open files): do not spin.
			select {
			case <-time.After(10 * time.Millisecond):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		p.accepted.Add(1)
		p.serve(c)
	}
}

// serve routes one accepted connection: refused, black-holed or forwarded.
func (p *Proxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.closed || p.refuse {
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	if p.blackhole {
		p.holes[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.hold(c)
		return
	}
	target := p.target
	p.wg.Add(1)
	p.mu.Unlock()
	go p.forwardConn(c, target)
}

// hold reads and discards what a black-holed client sends until the
// connection is closed (Cut, Close, or the client).
func (p *Proxy) hold(c net.Conn) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.holes, c)
		p.mu.Unlock()
		_ = c.Close()
	}()
	_, _ = io.Copy(io.Discard, c)
}

// forwardConn dials the target and pumps both ways until either side ends.
func (p *Proxy) forwardConn(client net.Conn, target string) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: 5 * time.Second}
	server, err := d.DialContext(p.ctx, "tcp", target)
	if err != nil {
		// Like a proxy whose backend is down: the client sees its connection closed.
		_ = client.Close()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = client.Close()
		_ = server.Close()
		return
	}
	p.nextID++
	l := &link{p: p, id: p.nextID, client: client, server: server, done: make(chan struct{})}
	for i := range l.budget {
		l.budget[i] = p.faults[i].stallAfter
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()

	var pumps sync.WaitGroup
	pumps.Go(func() { l.pump(Upstream, client, server) })
	pumps.Go(func() { l.pump(Downstream, server, client) })
	pumps.Wait()
	l.shut(false)
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// link is one proxied connection.
type link struct {
	p              *Proxy
	id             uint64
	client, server net.Conn
	done           chan struct{} // closed by shut
	shutOnce       sync.Once
	// budget is the StallAfter allowance per dirIndex (noBudget = none),
	// guarded by p.mu.
	budget [2]int64
}

// shut closes both sockets once (reset when rst) and wakes both pumps.
func (l *link) shut(rst bool) {
	l.shutOnce.Do(func() {
		close(l.done)
		closeConn(l.client, rst)
		closeConn(l.server, rst)
	})
}

func closeConn(c net.Conn, rst bool) {
	if tc, ok := c.(*net.TCPConn); ok && rst {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// pump copies src to dst in direction d, applying the faults. A clean EOF is
// passed on as a half-close; any other end shuts the whole link.
func (l *link) pump(d Direction, src, dst net.Conn) {
	i := dirIndex(d)
	rng := rand.New(rand.NewPCG(l.p.seed, l.id<<1|uint64(i)))
	buf := make([]byte, 32<<10)
	var offset int64 // bytes of this direction forwarded so far
	for {
		// Wait before reading too: a stalled direction leaves the bytes in
		// the kernel buffers, so the sender's writes eventually block.
		if _, ok := l.permit(i, 1, false); !ok {
			return
		}
		n, err := src.Read(buf)
		chunk := buf[:n]
		for len(chunk) > 0 {
			f, ok := l.permit(i, len(chunk), true)
			if !ok {
				return
			}
			piece := chunk[:f.allowed]
			if f.delay > 0 && !l.sleep(f.delay) {
				return
			}
			corrupt(piece, offset, f, rng)
			if _, werr := dst.Write(piece); werr != nil {
				l.shut(false)
				return
			}
			offset += int64(len(piece))
			l.p.forward[i].Add(int64(len(piece)))
			if f.rate > 0 && !l.sleep(time.Duration(int64(len(piece))*int64(time.Second)/f.rate)) {
				return
			}
			chunk = chunk[len(piece):]
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
					return
				}
			}
			l.shut(false)
			return
		}
	}
}

// grant is what one write may do under the current faults.
type grant struct {
	allowed     int
	rate        int64
	delay       time.Duration
	corruptRate float64
	corruptAt   map[int64]struct{}
}

// permit waits until direction i may forward and returns how many of want
// bytes it may forward now, charging them to the StallAfter budget when
// charge is set. It returns false when the link or the proxy ends meanwhile.
func (l *link) permit(i, want int, charge bool) (grant, bool) {
	for {
		p := l.p
		p.mu.Lock()
		f := p.faults[i]
		budget := l.budget[i]
		wake := p.changed
		if !f.stalled && budget != 0 {
			g := grant{allowed: want, rate: f.rate, delay: f.chunkDelay, corruptRate: f.corruptRate, corruptAt: f.corruptAt}
			if budget > 0 {
				g.allowed = int(min(int64(want), budget))
			}
			if f.rate > 0 {
				// Small pieces keep a slow link smooth: about 20 writes a second.
				g.allowed = min(g.allowed, int(max(f.rate/20, 1)))
			}
			if charge && budget > 0 {
				l.budget[i] = budget - int64(g.allowed)
			}
			p.mu.Unlock()
			return g, true
		}
		p.mu.Unlock()
		select {
		case <-wake:
		case <-l.done:
			return grant{}, false
		case <-p.ctx.Done():
			return grant{}, false
		}
	}
}

// sleep waits d unless the link ends first.
func (l *link) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.done:
		return false
	case <-l.p.ctx.Done():
		return false
	}
}

// corrupt applies the corruption faults to piece, which starts at offset of
// its direction's stream.
func corrupt(piece []byte, offset int64, g grant, rng *rand.Rand) {
	if g.corruptRate > 0 {
		for j := range piece {
			if rng.Float64() < g.corruptRate {
				piece[j] ^= byte(1 + rng.IntN(255)) // never 0: the byte always changes
			}
		}
	}
	for j := range piece {
		if _, ok := g.corruptAt[offset+int64(j)]; ok {
			piece[j] ^= 0xFF
		}
	}
}
