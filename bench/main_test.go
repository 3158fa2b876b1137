package bench

import (
	"fmt"
	"os"
	"testing"
)

// roleEnv names the role of a re-executed test binary. Unset (the normal test
// run, and the benchmark process itself) nothing extra happens here.
const roleEnv = "BENCH_ROLE"

// readyPrefix starts the one stdout line a role prints once it serves.
const readyPrefix = "BENCH-READY "

func TestMain(m *testing.M) {
	role := os.Getenv(roleEnv)
	if role == "" {
		os.Exit(m.Run())
	}
	var err error
	switch role {
	case "nats":
		err = roleNATS()
	case "nats-node":
		err = roleNATSNode()
	case "raw":
		err = roleRaw()
	case "glue":
		err = roleGlue()
	case "sim":
		err = roleSim(os.Args[1:])
	case roleOSSim:
		err = roleOpenStreamSim(os.Args[1:])
	case roleOSRaw:
		err = roleOpenStreamRaw()
	default:
		err = fmt.Errorf("unknown %s=%q", roleEnv, role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench role %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}
