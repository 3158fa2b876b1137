package sim_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/jetbridge/connector/connector/openstream/sim"
)

// A CLI wires the simulator like this: defaults, flags, validation, then Serve until the context
// ends (or Start(cfg.Addr) and Close).
func Example_cli() {
	cfg := sim.DefaultConfig()
	fs := flag.NewFlagSet("sim openstream", flag.ContinueOnError)
	cfg.RegisterFlags(fs) // includes -addr (default 127.0.0.1:49000, the vendor's port)
	if err := fs.Parse([]string{"-addr", "127.0.0.1:0", "-armed-timeout", "10s", "-fault-ack-after-data"}); err != nil {
		panic(err)
	}
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = sim.New(cfg, zerolog.Nop()).Serve(ctx, ln) // returns once everything has stopped
	fmt.Println("serve returned:", err)
	// Output: serve returned: <nil>
}

// Tests start a server on a free port and talk to it over TCP.
func Example_test() {
	s := sim.New(sim.Config{}, zerolog.Nop())
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer s.Close()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	fmt.Fprintln(c, `{"cmd":"HANDSHAKE","payload":{"major":1}}`)
	fmt.Fprintln(c, `{"cmd":"CONTROL","payload":{"method":"POST","url":"/project/robot/trajectory/joint_traject_insert_point","body":{"interval":0,"point":[1,2,3,4,5,6]}}}`)
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Print(line)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// The point moves the arm before the command is recorded: wait for both.
	s.WaitFor(ctx, func() bool { return s.Joints() == [6]float64{1, 2, 3, 4, 5, 6} && len(s.Received()) == 2 })
	fmt.Println(s.Joints(), len(s.Received()))
	// Output:
	// {"type":"handshake_ack","ok":true,"version":"1.0.0"}
	// [1 2 3 4 5 6] 2
}
