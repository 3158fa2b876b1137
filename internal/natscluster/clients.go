package natscluster

import (
	"fmt"
	"slices"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// maxConnz bounds how many open client connections one node's answer lists:
// the tests using the harness hold a few dozen at most.
const maxConnz = 1024

// ConnectedNode is the index of the node nc is connected to right now (from
// the server name its INFO announced), or an error while it is reconnecting.
func (c *Cluster) ConnectedNode(nc *nats.Conn) (int, error) {
	if !nc.IsConnected() {
		return -1, fmt.Errorf("connection %q is not connected (status %v)", nc.Opts.Name, nc.Status())
	}
	name := nc.ConnectedServerName()
	i := c.Index(name)
	if i < 0 {
		return -1, fmt.Errorf("connection %q is connected to %q, not a node of this cluster", nc.Opts.Name, name)
	}
	return i, nil
}

// ClientNodes lists, in ascending order, the running nodes holding an open
// client connection named name (nats.Name), one entry per connection: how a
// test finds the node a child process is connected to, whose connections it
// cannot ask. Killed nodes hold none.
func (c *Cluster) ClientNodes(name string) ([]int, error) {
	var nodes []int
	for i := range c.opts.Nodes {
		s := c.server(i)
		if s == nil {
			continue
		}
		cz, err := s.Connz(&server.ConnzOptions{State: server.ConnOpen, Limit: maxConnz})
		if err != nil {
			return nil, fmt.Errorf("node n%d connections: %w", i, err)
		}
		for _, ci := range cz.Conns {
			if ci.Name == name {
				nodes = append(nodes, i)
			}
		}
	}
	slices.Sort(nodes)
	return nodes, nil
}
