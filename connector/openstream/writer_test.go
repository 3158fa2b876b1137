package openstream

import (
	"bufio"
	"context"
	"net"
	"testing"
)

// CONTROL goes ahead of every line already waiting in the writer's queue.
func TestWriterControlFirst(t *testing.T) {
	r := &Robot{common: testConfig(), cfg: RobotConfig{Name: robotName}}
	c := &conn{r: r, id: controlConnID}
	client, server := net.Pipe()
	defer server.Close()
	s := newSession(c, client, 1)
	ctx := context.Background()
	for _, l := range []string{"n1\n", "n2\n", "n3\n"} {
		if err := s.enqueue(ctx, s.normQ, outMsg{line: []byte(l)}); err != nil {
			t.Fatal(err)
		}
	}
	written := make(chan error, 1)
	if err := s.control(ctx, []byte("c1\n"), nil, written); err != nil {
		t.Fatal(err)
	}
	go s.write()
	br := bufio.NewReader(server)
	var got []string
	for range 4 {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l[:len(l)-1])
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if got[0] != "c1" || got[1] != "n1" || got[3] != "n3" {
		t.Fatalf("write order %v, want c1 first", got)
	}
	s.cancel()
	_ = client.Close()
	<-s.wrDone
}
