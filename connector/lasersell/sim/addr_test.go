package sim

import (
	"flag"
	"net"
	"testing"
)

// A simulator started with its defaults is reachable from this host only:
// accepting other hosts (a container's published port) takes an explicit
// -addr 0.0.0.0:PORT, as docker-compose.yml passes.
func TestDefaultAddrIsLoopback(t *testing.T) {
	for name, cfg := range map[string]Config{"DefaultConfig": DefaultConfig(), "DemoConfig": DemoConfig()} {
		fs := flag.NewFlagSet("sim", flag.ContinueOnError)
		cfg.RegisterFlags(fs)
		if err := fs.Parse(nil); err != nil {
			t.Fatal(err)
		}
		for what, addr := range map[string]string{"Addr": cfg.Addr, "-addr default": fs.Lookup("addr").DefValue} {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				t.Fatalf("%s %s %q: %v", name, what, addr, err)
			}
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				t.Errorf("%s %s %q: want a loopback address", name, what, addr)
			}
			if port != "8082" {
				t.Errorf("%s %s %q: want the SDKs' port 8082", name, what, addr)
			}
		}
	}
	if addr := (Config{}).withDefaults().Addr; addr != DefaultAddr {
		t.Errorf("a zero Config listens on %q, want %q", addr, DefaultAddr)
	}
}
