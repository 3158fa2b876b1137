// Package bench holds the connector's benchmarks (see BENCHMARKS.md at the
// repository root). Everything is in _test.go files: the system benchmark
// builds the real connector binary and runs it as a child process next to a
// NATS server, a LaserSell simulator, a raw JetStream publisher and the
// hand-written glue it is measured against (issue 12), each a re-execution of
// the test binary with BENCH_ROLE set. Every figure is also printed as a
// "RESULT <name> <value>" line.
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
package bench
