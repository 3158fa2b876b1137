package natscluster

import (
	"errors"
	"sync"
)

// KillAll kills every running node at once, as a power loss of the whole
// cluster would: all routes are reset first (no node hands a leadership to
// another on the way down), then the servers stop together. Store
// directories and ports are kept for RestartAll.
func (c *Cluster) KillAll() {
	c.t.Helper()
	var running []int
	for i := range c.opts.Nodes {
		if c.server(i) != nil {
			running = append(running, i)
		}
	}
	for _, i := range running {
		c.cutLinks(i, true)
	}
	var wg sync.WaitGroup
	for _, i := range running {
		wg.Go(func() {
			s := c.server(i)
			s.Shutdown()
			s.WaitForShutdown()
			c.mu.Lock()
			c.nodes[i].srv = nil
			c.mu.Unlock()
		})
	}
	wg.Wait()
}

// RestartAll restarts the whole cluster on the same stores: it kills the
// nodes still running (KillAll), starts every node again with its store
// directory, name and ports, all at once as after a power cut, and waits, at
// most Options.ReadyTimeout, until the cluster has formed again (a meta
// leader knowing every node, every node JetStream-current and healthy, so
// streams and buckets have recovered their state). Isolation is cleared.
// Stream leaders are elected afterwards: wait for them with
// WaitStreamLeader.
func (c *Cluster) RestartAll() {
	c.t.Helper()
	c.KillAll()
	c.mu.Lock()
	clear(c.isolated)
	c.mu.Unlock()
	for i := range c.opts.Nodes {
		c.cutLinks(i, false)
	}
	errs := make([]error, c.opts.Nodes)
	var wg sync.WaitGroup
	for i := range c.opts.Nodes {
		wg.Go(func() { errs[i] = c.startNode(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.t.Fatalf("natscluster: RestartAll: %v", err)
	}
	if err := c.waitFormed(); err != nil {
		c.t.Fatalf("natscluster: RestartAll: %v", err)
	}
}
