// Package natscluster runs a small JetStream cluster inside the test process,
// for tests and benchmarks that need leader changes, crashed nodes and
// network partitions: N in-process nats-server nodes (three by default) on
// loopback, joined by routes.
//
// Every route connection goes through a loopback fault proxy
// (internal/faultproxy), one per ordered pair of nodes: the proxy links[a][b]
// carries the route connections that node a dials to node b. Cutting and
// refusing the proxies of a node isolates it from its peers while its clients
// still reach it (Isolate), and is the first step of an abrupt crash (Kill),
// so that a killed node cannot hand its leaderships over on the way down as a
// graceful shutdown does. Nodes advertise an address that refuses
// connections (127.0.0.1:1) as their route address, so that peers never
// open an implicit (gossiped) route that would bypass the proxies: every
// route is one of the configured, proxied ones.
//
// Beyond single nodes: leader step-downs of a stream or bucket (StepDown),
// the whole cluster killed and restarted on its stores (KillAll,
// RestartAll), and which node a client is connected to (ConnectedNode for
// a connection of the test, ClientNodes by connection name for another
// process's).
//
// The raft election timeouts of nats-server are package constants that an
// embedding program cannot change: after a leader dies, its followers elect a
// new one after the server's own randomised election timeout (4 to 9 s in
// v2.15), as in production.
package natscluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetbridge/connector/internal/faultproxy"
)

// Options configure a cluster. The zero value is a three-node cluster with
// small JetStream limits.
type Options struct {
	// Nodes is the number of servers; default 3.
	Nodes int
	// Name is the cluster name; default "natscluster".
	Name string
	// MaxMemory and MaxStore bound each node's JetStream memory and file
	// storage in bytes; defaults 64 MiB and 256 MiB.
	MaxMemory int64
	MaxStore  int64
	// ReadyTimeout bounds every wait for the cluster to form or for a node to
	// rejoin; default 30 s.
	ReadyTimeout time.Duration
	// RoutePingInterval is the route ping interval, default 1 s (the server's
	// default is 2 min); a route is declared dead after 3 unanswered pings.
	RoutePingInterval time.Duration
}

func (o Options) withDefaults() Options {
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.Name == "" {
		o.Name = "natscluster"
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = 64 << 20
	}
	if o.MaxStore <= 0 {
		o.MaxStore = 256 << 20
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 30 * time.Second
	}
	if o.RoutePingInterval <= 0 {
		o.RoutePingInterval = time.Second
	}
	return o
}

// deadAdvertise is the route address every node advertises: nothing listens
// on port 1, so a gossiped (implicit) route attempt fails at once and is not
// retried, and only the configured, proxied routes exist.
const deadAdvertise = "127.0.0.1:1"

// pollInterval is how often the waits re-check their condition.
const pollInterval = 25 * time.Millisecond

// Cluster is a running cluster. Build it with Start; it is stopped at the
// test's cleanup. Its methods are safe for concurrent use, but the ones that
// fail the test (Start, Conn, Kill, Restart, KillAll, RestartAll, Isolate,
// Heal) must be called from the test's goroutine.
type Cluster struct {
	t     testing.TB
	opts  Options
	links [][]*faultproxy.Proxy // links[a][b]: routes dialled by a to b; nil when a == b

	mu       sync.Mutex
	nodes    []*node
	admin    *nats.Conn
	stopped  bool
	isolated []bool
}

type node struct {
	name        string
	dir         string
	clientPort  int
	clusterPort int
	srv         *server.Server // nil while killed
}

// Start starts the cluster and waits, at most opts.ReadyTimeout, until it has
// a meta leader that knows every node and every node's JetStream is current.
// It fails the test otherwise. Everything is stopped at t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	opts = opts.withDefaults()
	c := &Cluster{t: t, opts: opts, isolated: make([]bool, opts.Nodes)}

	// The ports stay reserved (listened on) while the route proxies take
	// their own ephemeral ports, so that no proxy lands on a node's port;
	// they are released just before the nodes start.
	ports, release, err := reservePorts(2 * opts.Nodes)
	if err != nil {
		t.Fatalf("natscluster: %v", err)
	}
	for i := range opts.Nodes {
		c.nodes = append(c.nodes, &node{
			name:        fmt.Sprintf("n%d", i),
			dir:         t.TempDir(),
			clientPort:  ports[2*i],
			clusterPort: ports[2*i+1],
		})
	}
	// Registered after the store directories: cleanups run last-in first-out,
	// so the servers stop before their directories are removed.
	t.Cleanup(c.stop)
	c.links = make([][]*faultproxy.Proxy, opts.Nodes)
	for a := range opts.Nodes {
		c.links[a] = make([]*faultproxy.Proxy, opts.Nodes)
		for b := range opts.Nodes {
			if a == b {
				continue
			}
			target := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.nodes[b].clusterPort))
			p, err := faultproxy.New(target, uint64(a*opts.Nodes+b))
			if err != nil {
				t.Fatalf("natscluster: route proxy n%d->n%d: %v", a, b, err)
			}
			c.links[a][b] = p
		}
	}

	release()
	// Start the nodes concurrently: each waits for its listeners only.
	errs := make([]error, opts.Nodes)
	var wg sync.WaitGroup
	for i := range opts.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.startNode(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("natscluster: %v", err)
	}
	if err := c.waitFormed(); err != nil {
		t.Fatalf("natscluster: %v", err)
	}
	nc, err := nats.Connect(c.URLs(), c.connOptions("natscluster-admin")...)
	if err != nil {
		t.Fatalf("natscluster: admin connection: %v", err)
	}
	c.mu.Lock()
	c.admin = nc
	c.mu.Unlock()
	return c
}

// reservePorts listens on n distinct free loopback ports and returns them
// with the function that releases them (closes the listeners).
func reservePorts(n int) (ports []int, release func(), err error) {
	var lns []net.Listener
	release = func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			release()
			return nil, nil, fmt.Errorf("reserving a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, release, nil
}

// serverOptions builds a fresh options value for node i (the server keeps and
// modifies the one it is given).
func (c *Cluster) serverOptions(i int) *server.Options {
	n := c.nodes[i]
	var routes []*url.URL
	for b := range c.opts.Nodes {
		if b != i {
			routes = append(routes, &url.URL{Scheme: "nats-route", Host: c.links[i][b].Addr()})
		}
	}
	return &server.Options{
		ServerName:         n.name,
		Host:               "127.0.0.1",
		Port:               n.clientPort,
		NoSigs:             true,
		NoLog:              true,
		JetStream:          true,
		StoreDir:           n.dir,
		JetStreamMaxMemory: c.opts.MaxMemory,
		JetStreamMaxStore:  c.opts.MaxStore,
		Cluster: server.ClusterOpts{
			Name:         c.opts.Name,
			Host:         "127.0.0.1",
			Port:         n.clusterPort,
			Advertise:    deadAdvertise,
			PingInterval: c.opts.RoutePingInterval,
			MaxPingsOut:  3,
		},
		Routes: routes,
	}
}

// startNode starts node i and waits until it accepts client connections.
func (c *Cluster) startNode(i int) error {
	n := c.nodes[i]
	s, err := server.NewServer(c.serverOptions(i))
	if err != nil {
		return fmt.Errorf("node %s: %w", n.name, err)
	}
	go s.Start()
	if !s.ReadyForConnections(c.opts.ReadyTimeout) {
		s.Shutdown()
		s.WaitForShutdown()
		return fmt.Errorf("node %s did not listen on 127.0.0.1:%d (client) and :%d (cluster) within %v",
			n.name, n.clientPort, n.clusterPort, c.opts.ReadyTimeout)
	}
	c.mu.Lock()
	n.srv = s
	c.mu.Unlock()
	return nil
}

// waitFormed waits until there is a meta leader that knows every node, and
// every running node's JetStream is current and healthy.
func (c *Cluster) waitFormed() error {
	return waitFor(c.opts.ReadyTimeout, "the cluster to form (a meta leader knowing all nodes, every running node JetStream-current and healthy)", func() error {
		leader, err := c.MetaLeader()
		if err != nil {
			return err
		}
		if peers := c.server(leader).JetStreamClusterPeers(); len(peers) < c.opts.Nodes {
			return fmt.Errorf("meta leader n%d knows %d peers %v, want %d", leader, len(peers), peers, c.opts.Nodes)
		}
		for i := range c.opts.Nodes {
			if s := c.server(i); s != nil {
				if err := nodeReady(s); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// nodeReady reports why s is not a JetStream-current, healthy member.
func nodeReady(s *server.Server) error {
	if !s.JetStreamIsCurrent() {
		return fmt.Errorf("node %s: JetStream meta state not current", s.Name())
	}
	if h := s.Healthz(&server.HealthzOptions{}); h.Status != "ok" {
		return fmt.Errorf("node %s: healthz %q: %s", s.Name(), h.Status, h.Error)
	}
	return nil
}

// waitFor polls check until it returns nil, at most timeout; the error names
// what did not happen and the last reason.
func waitFor(timeout time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not happen within %v: %w", what, timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// waitCtx is waitFor bounded by ctx, and by fallback when ctx has no deadline.
func waitCtx(ctx context.Context, fallback time.Duration, what string, check func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, fallback)
		defer cancel()
	}
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not happen before %v: %w", what, context.Cause(ctx), last)
		case <-time.After(pollInterval):
		}
	}
}

func (c *Cluster) stop() {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	admin := c.admin
	var running []*server.Server
	for _, n := range c.nodes {
		if n.srv != nil {
			running = append(running, n.srv)
			n.srv = nil
		}
	}
	c.mu.Unlock()
	if admin != nil {
		admin.Close()
	}
	var wg sync.WaitGroup
	for _, s := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Shutdown()
			s.WaitForShutdown()
		}()
	}
	wg.Wait()
	for _, row := range c.links {
		for _, p := range row {
			if p != nil {
				p.Close()
			}
		}
	}
}

// N is the number of nodes.
func (c *Cluster) N() int { return c.opts.Nodes }

// Name is the cluster name.
func (c *Cluster) Name() string { return c.opts.Name }

// URLs is the comma-separated client URLs of all nodes, killed ones included
// (their ports stay reserved for Restart), for nats.Connect or NATS_URL.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// URL is node i's client URL.
func (c *Cluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].clientPort)
}

// Node is node i's server, nil while it is killed.
func (c *Cluster) Node(i int) *server.Server { return c.server(i) }

// StoreDir is node i's JetStream store directory.
func (c *Cluster) StoreDir(i int) string { return c.nodes[i].dir }

func (c *Cluster) server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].srv
}

// Index is the index of the node named name (n0, n1, ...), or -1.
func (c *Cluster) Index(name string) int {
	for i, n := range c.nodes {
		if n.name == name {
			return i
		}
	}
	return -1
}

func (c *Cluster) connOptions(name string) []nats.Option {
	return []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
		nats.ReconnectJitter(25*time.Millisecond, 25*time.Millisecond),
		nats.Timeout(2 * time.Second),
	}
}

// Conn is a client connection to the cluster that reconnects, forever, to
// any node; it is closed at t.Cleanup.
func (c *Cluster) Conn(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), c.connOptions(t.Name())...)
	if err != nil {
		t.Fatalf("natscluster: connect to %s: %v", c.URLs(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ConnTo is a client connection to the given nodes only, reconnecting
// forever among them; it is closed at t.Cleanup.
func (c *Cluster) ConnTo(t testing.TB, nodes ...int) *nats.Conn {
	t.Helper()
	urls := make([]string, len(nodes))
	for k, i := range nodes {
		urls[k] = c.URL(i)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), c.connOptions(t.Name())...)
	if err != nil {
		t.Fatalf("natscluster: connect to %v: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// MetaLeader is the index of the running node that leads the JetStream meta
// group. It is an error when no running node, or more than one, says it is.
func (c *Cluster) MetaLeader() (int, error) {
	leader := -1
	for i := range c.opts.Nodes {
		s := c.server(i)
		if s == nil || !s.JetStreamIsLeader() {
			continue
		}
		if leader >= 0 {
			return -1, fmt.Errorf("both n%d and n%d claim the meta leadership", leader, i)
		}
		leader = i
	}
	if leader < 0 {
		return -1, errors.New("no running node leads the JetStream meta group")
	}
	return leader, nil
}

// StreamLeader is the index of the node leading stream, from the JetStream
// API (stream info's cluster leader).
func (c *Cluster) StreamLeader(ctx context.Context, stream string) (int, error) {
	c.mu.Lock()
	admin := c.admin
	c.mu.Unlock()
	if admin == nil {
		return -1, errors.New("cluster stopped")
	}
	js, err := jetstream.New(admin)
	if err != nil {
		return -1, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, fmt.Errorf("stream %s info: %w", stream, err)
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("stream %s has no leader", stream)
	}
	i := c.Index(info.Cluster.Leader)
	if i < 0 {
		return -1, fmt.Errorf("stream %s leader %q is not a node of this cluster", stream, info.Cluster.Leader)
	}
	return i, nil
}

// KVLeader is the index of the node leading the key-value bucket's stream
// (KV_<bucket>).
func (c *Cluster) KVLeader(ctx context.Context, bucket string) (int, error) {
	return c.StreamLeader(ctx, "KV_"+bucket)
}

// WaitStreamLeader waits, bounded by ctx (30 s without a deadline), until
// stream has a leader other than not (-1: any), and returns it.
func (c *Cluster) WaitStreamLeader(ctx context.Context, stream string, not int) (int, error) {
	leader := -1
	err := waitCtx(ctx, c.opts.ReadyTimeout, fmt.Sprintf("a leader of stream %s other than node %d", stream, not), func(ctx context.Context) error {
		// A stream without a leader does not answer: each attempt's
		// timeout is the resolution of the time to a new leader.
		rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		l, err := c.StreamLeader(rctx, stream)
		if err != nil {
			return err
		}
		if l == not {
			return fmt.Errorf("stream %s still led by n%d", stream, l)
		}
		leader = l
		return nil
	})
	return leader, err
}

// StepDown asks the leader of stream to step down
// ($JS.API.STREAM.LEADER.STEPDOWN.<stream>) and waits, bounded by ctx (30 s
// without a deadline), until another node is reported as its leader, which
// it returns.
func (c *Cluster) StepDown(ctx context.Context, stream string) (int, error) {
	old, err := c.StreamLeader(ctx, stream)
	if err != nil {
		return -1, err
	}
	c.mu.Lock()
	admin := c.admin
	c.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := admin.RequestWithContext(rctx, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, nil)
	if err != nil {
		return -1, fmt.Errorf("stream %s step-down request: %w", stream, err)
	}
	var resp struct {
		Success bool `json:"success"`
		Error   *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return -1, fmt.Errorf("stream %s step-down response %q: %w", stream, msg.Data, err)
	}
	if resp.Error != nil {
		return -1, fmt.Errorf("stream %s step-down: %s (code %d, err_code %d)", stream, resp.Error.Description, resp.Error.Code, resp.Error.ErrCode)
	}
	if !resp.Success {
		return -1, fmt.Errorf("stream %s step-down not successful: %s", stream, msg.Data)
	}
	return c.WaitStreamLeader(ctx, stream, old)
}

// cutLinks stops (on) or restores (off) every route between node i and its
// peers: new route connections are refused and current ones reset.
func (c *Cluster) cutLinks(i int, on bool) {
	for j := range c.opts.Nodes {
		if j == i {
			continue
		}
		for _, p := range []*faultproxy.Proxy{c.links[i][j], c.links[j][i]} {
			p.Refuse(on)
			if on {
				p.Cut(true)
			}
		}
	}
}

// Kill stops node i abruptly, as a crash would: its routes are reset first
// (so that it cannot hand over its leaderships or tell its peers), then the
// server is shut down. Its store directory and ports are kept for Restart.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	s := c.server(i)
	if s == nil {
		c.t.Fatalf("natscluster: Kill(%d): node n%d is not running", i, i)
	}
	c.cutLinks(i, true)
	s.Shutdown()
	s.WaitForShutdown()
	c.mu.Lock()
	c.nodes[i].srv = nil
	c.mu.Unlock()
}

// Restart starts the killed node i again, with the same store directory,
// name and ports, and waits, at most Options.ReadyTimeout, until it has
// rejoined: its JetStream meta state is current and its streams and
// consumers have caught up (healthz ok), and a meta leader knows all nodes.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if c.server(i) != nil {
		c.t.Fatalf("natscluster: Restart(%d): node n%d is running", i, i)
	}
	c.mu.Lock()
	isolated := c.isolated[i]
	c.mu.Unlock()
	if !isolated {
		c.cutLinks(i, false)
	}
	if err := c.startNode(i); err != nil {
		c.t.Fatalf("natscluster: Restart(%d): %v", i, err)
	}
	if isolated {
		return
	}
	if err := c.waitRejoined(i); err != nil {
		c.t.Fatalf("natscluster: Restart(%d): %v", i, err)
	}
}

func (c *Cluster) waitRejoined(i int) error {
	return waitFor(c.opts.ReadyTimeout, fmt.Sprintf("node n%d rejoining (meta leader knows all nodes, n%d JetStream-current and healthy)", i, i), func() error {
		leader, err := c.MetaLeader()
		if err != nil {
			return err
		}
		if peers := c.server(leader).JetStreamClusterPeers(); len(peers) < c.opts.Nodes {
			return fmt.Errorf("meta leader n%d knows %d peers %v, want %d", leader, len(peers), peers, c.opts.Nodes)
		}
		s := c.server(i)
		if s == nil {
			return fmt.Errorf("node n%d stopped", i)
		}
		return nodeReady(s)
	})
}

// Isolate cuts node i off from its peers (every route connection reset, new
// ones refused) while it keeps running and serving its clients: a network
// partition with the node in the minority.
func (c *Cluster) Isolate(i int) {
	c.t.Helper()
	c.mu.Lock()
	c.isolated[i] = true
	c.mu.Unlock()
	c.cutLinks(i, true)
}

// Heal ends Isolate(i): routes are accepted again (the nodes redial them
// within about a second) and, if node i is running, Heal waits, at most
// Options.ReadyTimeout, until node i has routes to every running peer and its
// JetStream meta state is current. It does not wait for node i's streams to
// catch up: after a partition, a stream replica of the formerly isolated
// node was seen staying "not current" for tens of seconds (nats-server
// v2.15.2); poll Node(i).Healthz when a test needs that.
func (c *Cluster) Heal(i int) {
	c.t.Helper()
	c.mu.Lock()
	c.isolated[i] = false
	c.mu.Unlock()
	c.cutLinks(i, false)
	s := c.server(i)
	if s == nil {
		return
	}
	err := waitFor(c.opts.ReadyTimeout, fmt.Sprintf("node n%d reconnecting to its peers with a current JetStream meta state", i), func() error {
		for j := range c.opts.Nodes {
			if j != i && c.server(j) != nil && !c.connected(i, j) {
				return fmt.Errorf("no route between n%d and n%d", i, j)
			}
		}
		if _, err := c.MetaLeader(); err != nil {
			return err
		}
		if !s.JetStreamIsCurrent() {
			return fmt.Errorf("node n%d: JetStream meta state not current", i)
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("natscluster: Heal(%d): %v", i, err)
	}
}

// connected reports whether node i has a route to node j.
func (c *Cluster) connected(i, j int) bool {
	s := c.server(i)
	if s == nil {
		return false
	}
	rz, err := s.Routez(&server.RoutezOptions{})
	if err != nil {
		return false
	}
	for _, r := range rz.Routes {
		if r.RemoteName == c.nodes[j].name {
			return true
		}
	}
	return false
}

// Routes is the number of route connections node i holds (0 when it is
// killed or isolated).
func (c *Cluster) Routes(i int) int {
	s := c.server(i)
	if s == nil {
		return 0
	}
	rz, err := s.Routez(&server.RoutezOptions{})
	if err != nil {
		return 0
	}
	return len(rz.Routes)
}

// RouteProxy is the fault proxy that carries the route connections node a
// dials to node b, for finer faults (stalls, slow links) than Isolate.
func (c *Cluster) RouteProxy(a, b int) *faultproxy.Proxy { return c.links[a][b] }
