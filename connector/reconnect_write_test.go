package connector

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestWriteEndReasonTellsAPeerResetFromAFailedWrite(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.ECONNRESET)}, ReasonClosedByPeer},
		{&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", syscall.EPIPE)}, ReasonClosedByPeer},
		{fmt.Errorf("flush: %w", syscall.EPIPE), ReasonClosedByPeer},
		{&net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}, ReasonWrite},
		{errors.New("write queue full"), ReasonWrite},
		{net.ErrClosed, ReasonWrite},
	}
	for _, c := range cases {
		if got := WriteEndReason(c.err); got != c.want {
			t.Errorf("WriteEndReason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// A real socket whose peer reset it: the write error that results is
// classified as the peer's doing.
func TestWriteEndReasonOnARealReset(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	_ = peer.(*net.TCPConn).SetLinger(0) // close with RST
	_ = peer.Close()
	var werr error
	deadline := time.Now().Add(5 * time.Second)
	for werr == nil && time.Now().Before(deadline) {
		_, werr = c.Write([]byte("x\n"))
		time.Sleep(10 * time.Millisecond)
	}
	if werr == nil {
		t.Fatal("writes to a reset connection kept succeeding for 5 s")
	}
	if got := WriteEndReason(werr); got != ReasonClosedByPeer {
		t.Fatalf("write after a reset: %v classified %q, want %q", werr, got, ReasonClosedByPeer)
	}
}
