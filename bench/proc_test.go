package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// child is one process the benchmark started; it is stopped at cleanup.
type child struct {
	name string
	role string // what it is, for CPU accounting: nats, raw, sim, connector
	cmd  *exec.Cmd
	log  *os.File

	readyC  chan json.RawMessage
	resultC chan json.RawMessage
	exited  chan struct{}
	waitErr error
	stopped sync.Once
}

// startChild starts cmd, copying its stdout and stderr to <dir>/<name>.log and
// watching stdout for the readiness and result lines of a role. Failures go to
// b; cleanup (usually the Cleanup of b or of the benchmark owning the rig)
// registers the child's stop.
func startChild(b testing.TB, cleanup func(func()), dir, name string, cmd *exec.Cmd) *child {
	b.Helper()
	path := filepath.Join(dir, name+".log")
	for i := 2; ; i++ { // several windows start the same role
		if _, err := os.Stat(path); err != nil {
			break
		}
		path = filepath.Join(dir, name+"-"+strconv.Itoa(i)+".log")
	}
	logf, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	c := &child{name: name, role: name, cmd: cmd, log: logf,
		readyC: make(chan json.RawMessage, 1), resultC: make(chan json.RawMessage, 1), exited: make(chan struct{})}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	// The child dies with the benchmark process even if the cleanup never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			switch {
			case strings.HasPrefix(line, readyPrefix):
				c.readyC <- json.RawMessage(strings.TrimPrefix(line, readyPrefix))
			case strings.HasPrefix(line, "BENCH-RESULT "):
				c.resultC <- json.RawMessage(strings.TrimPrefix(line, "BENCH-RESULT "))
			}
		}
		_, _ = io.Copy(logf, out)
	}()
	go func() {
		<-copied
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	cleanup(func() { c.stop(); logf.Close() })
	return c
}

// startRole re-executes this test binary with BENCH_ROLE=role and waits for
// its readiness line, decoded into v.
func startRole(b testing.TB, cleanup func(func()), dir, name, role string, env []string, args []string, v any) *child {
	b.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), roleEnv+"="+role), env...)
	c := startChild(b, cleanup, dir, name, cmd)
	c.role = role
	select {
	case raw := <-c.readyC:
		if v != nil {
			if err := json.Unmarshal(raw, v); err != nil {
				b.Fatalf("%s: readiness line: %v", name, err)
			}
		}
	case <-c.exited:
		b.Fatalf("%s exited before it was ready (%v); see %s", name, c.waitErr, c.log.Name())
	case <-time.After(30 * time.Second):
		b.Fatalf("%s not ready after 30s; see %s", name, c.log.Name())
	}
	return c
}

// stop sends SIGTERM, waits up to 15 s, then kills.
func (c *child) stop() {
	c.stopped.Do(func() {
		select {
		case <-c.exited:
			return
		default:
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(15 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
}

// cpu returns the process's user+system CPU time so far (/proc/<pid>/stat,
// every thread, clock-tick resolution).
func (c *child) cpu() time.Duration {
	return procCPU(c.cmd.Process.Pid)
}

// clockTick is the unit of utime/stime in /proc/<pid>/stat (USER_HZ: 100 on
// every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * clockTick
}

// httpGet fetches url and returns the body.
func httpGet(url string) ([]byte, error) {
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

func getJSON(url string, v any) error {
	body, err := httpGet(url)
	if err != nil {
		return err
	}
	return json.Unmarshal(body, v)
}

// promSample is a scrape of the Prometheus text format: series -> value.
type promSample map[string]float64

func scrape(url string) (promSample, error) {
	body, err := httpGet(url)
	if err != nil {
		return nil, err
	}
	out := promSample{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, nil
}

// sum adds every series of metric name whose labels include all of want
// (each `key="value"`).
func (p promSample) sum(name string, want ...string) float64 {
	var total float64
	for series, v := range p {
		base, labels, _ := strings.Cut(series, "{")
		if base != name {
			continue
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(labels, w) {
				ok = false
				break
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

var errNotYet = errors.New("not yet")

// waitFor polls cond every 50 ms for at most d.
func waitFor(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
