package natscluster

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// A client's node is seen from both ends, the client's (ConnectedNode) and
// the servers' (ClientNodes); when that node dies the client is found on
// another one.
func TestClientNodeFollowsReconnects(t *testing.T) {
	c := Start(t, Options{})
	pinned := c.ConnTo(t, 1)
	if i, err := c.ConnectedNode(pinned); err != nil || i != 1 {
		t.Fatalf("connection to n1 only: ConnectedNode %d, %v", i, err)
	}

	nc := c.Conn(t) // every node; named t.Name() like pinned
	var at int
	if err := waitFor(10*time.Second, "both connections listed by the servers", func() (err error) {
		if at, err = c.ConnectedNode(nc); err != nil {
			return err
		}
		nodes, err := c.ClientNodes(t.Name())
		if err != nil {
			return err
		}
		want := []int{1, at}
		slices.Sort(want)
		if !slices.Equal(nodes, want) {
			return fmt.Errorf("ClientNodes %v, want %v", nodes, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	victim := at
	if victim == 1 {
		// Kill the node both are on: the pinned one then has none.
		pinned.Close()
	}
	c.Kill(victim)
	if err := waitFor(10*time.Second, "the client reconnected to another node", func() (err error) {
		if at, err = c.ConnectedNode(nc); err != nil {
			return err
		}
		if at == victim {
			return fmt.Errorf("still on the killed n%d", victim)
		}
		nodes, err := c.ClientNodes(t.Name())
		if err != nil {
			return err
		}
		if !slices.Contains(nodes, at) || slices.Contains(nodes, victim) {
			return fmt.Errorf("ClientNodes %v; the client says n%d", nodes, at)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed n%d; the client moved to n%d", victim, at)
}
