package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jetbridge/connector/subjects"
)

// Every variable the connector reads, and every stream, is documented in the README.
func TestEveryVariableIsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	vars, err := envVariables()
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) < 50 {
		t.Fatalf("only %d variables found; envconfig usage changed?", len(vars))
	}
	for _, v := range vars {
		if !strings.Contains(string(readme), "`"+v[0]+"`") {
			t.Errorf("%s is not documented in README.md", v[0])
		}
	}
	for _, s := range subjects.Streams(subjects.LaserSell(), subjects.OpenStream()) {
		if !strings.Contains(string(readme), "`"+s.Name+"`") {
			t.Errorf("stream %s is not documented in README.md", s.Name)
		}
	}
}

// The README's quick start shows commands the demo prints (and
// TestDemoPrintedCommandsWork runs): they must not drift apart. The ways of
// invoking the binary (`go run ./cmd/connector`, `./bin/connector`) compare
// equal here; TestDemoReplayLineIsPasteable checks the demo's own.
func TestQuickStartCommandsAreTheDemos(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "## Quick start")
	if start < 0 {
		t.Fatal("README has no Quick start section")
	}
	section := text[start:]
	section = section[:strings.Index(section[3:], "\n## ")+3]
	header := normalizeInvocation(demoHeader("nats://127.0.0.1:4222", "127.0.0.1:8080"))
	checked := 0
	for _, block := range strings.Split(section, "```sh\n")[1:] {
		block = block[:strings.Index(block, "```")]
		for _, cmd := range strings.Split(strings.ReplaceAll(block, "\\\n", " "), "\n") {
			if i := strings.Index(cmd, "  #"); i >= 0 {
				cmd = cmd[:i]
			}
			cmd = strings.Join(strings.Fields(normalizeInvocation(cmd)), " ")
			if !strings.HasPrefix(cmd, "nats -s") && !strings.HasPrefix(cmd, "curl") && !strings.Contains(cmd, "connector replay") {
				continue
			}
			checked++
			if !strings.Contains(header, cmd) {
				t.Errorf("README quick start command is not one the demo prints: %s", cmd)
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d quick-start commands found in README.md", checked)
	}
}

// normalizeInvocation writes every way the README runs the binary as `connector`.
func normalizeInvocation(s string) string {
	return strings.NewReplacer("go run ./cmd/connector", "connector", "./bin/connector", "connector").Replace(s)
}

// readmeText returns README.md.
func readmeText(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(readme)
}

// The README's build command writes a runnable binary: not into a directory
// of the source tree (`go build -o connector` writes connector/connector,
// because connector/ is a package), and into a folder git and Docker ignore.
// Unless -short, it is run as written (into a temp dir) and the binary starts.
func TestREADMEBuildCommand(t *testing.T) {
	builds := regexp.MustCompile(`go build -o (\S+) \./cmd/connector`).FindAllStringSubmatch(readmeText(t), -1)
	if len(builds) == 0 {
		t.Fatal("README.md has no `go build -o PATH ./cmd/connector`")
	}
	ignored := func(file, dir string) bool {
		data, err := os.ReadFile(filepath.Join("../..", file))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Trim(strings.TrimSpace(line), "/") == dir {
				return true
			}
		}
		return false
	}
	for _, m := range builds {
		out := m[1]
		if strings.HasSuffix(out, "/") || filepath.IsAbs(out) {
			t.Fatalf("README builds to %q: want a file path inside the checkout, such as bin/connector", out)
		}
		if fi, err := os.Stat(filepath.Join("../..", out)); err == nil && fi.IsDir() {
			t.Fatalf("README builds to %q, an existing directory: go build would write %s/connector", out, out)
		}
		dir, _, found := strings.Cut(filepath.ToSlash(out), "/")
		if !found {
			t.Fatalf("README builds to %q, at the top of the source tree: use a folder such as bin/ that git and Docker ignore", out)
		}
		for _, file := range []string{".gitignore", ".dockerignore"} {
			if !ignored(file, dir) {
				t.Errorf("README builds into %s/, which %s does not list", dir, file)
			}
		}
		if !strings.Contains(readmeText(t), "./"+out) {
			t.Errorf("README builds %s but never says how to call it (./%s, or put %s on PATH)", out, out, dir)
		}
		if testing.Short() {
			continue
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			t.Fatalf("the go command is needed to build what the README builds (-short skips this part): %v", err)
		}
		bin := filepath.Join(t.TempDir(), out)
		build := exec.Command(goBin, "build", "-o", bin, "./cmd/connector")
		build.Dir = "../.."
		if msg, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build -o %s: %v\n%s", out, err, msg)
		}
		got, err := exec.Command(bin, "version").Output()
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(got)), version+" (") || !strings.Contains(string(got), "go1.") {
			t.Fatalf("%s version: %q %v (want the release, then the revision and Go version)", out, got, err)
		}
	}
}

// The replay command the demo prints runs as pasted in the checkout where
// `go run ./cmd/connector demo` was started: no bare `connector`, which is on
// no PATH after the quick start.
func TestDemoReplayLineIsPasteable(t *testing.T) {
	checked := 0
	for _, line := range strings.Split(demoHeader("nats://127.0.0.1:4222", "127.0.0.1:8080"), "\n") {
		fields := strings.Fields(line)
		for len(fields) > 0 && regexp.MustCompile(`^[A-Z_]+=`).MatchString(fields[0]) {
			fields = fields[1:] // VAR=value assignments before the command
		}
		if !slices.Contains(fields, "replay") {
			continue
		}
		checked++
		cmd := strings.Join(fields, " ")
		if !strings.HasPrefix(cmd, "go run ./cmd/connector replay ") && !strings.HasPrefix(cmd, "./bin/connector replay ") {
			t.Errorf("the demo prints %q: not pasteable (there is no connector on PATH); print go run ./cmd/connector replay, as README.md does", strings.TrimSpace(line))
		}
	}
	if checked == 0 {
		t.Fatal("the demo prints no replay command")
	}
}

// Every README example that names a session or robot uses the demo's names
// (what the quick start starts), so it runs as pasted against the demo. The
// exceptions are the pattern letters of the reference tables (lasersell.S.,
// openstream.R.) and the sections explicitly about another setup.
func TestREADMEExamplesUseDemoNames(t *testing.T) {
	subject := regexp.MustCompile(`\b(lasersell|openstream)\.([^.\s'"` + "`" + `]+)`)
	demo := map[string][]string{}
	for _, m := range subject.FindAllStringSubmatch(demoHeader("nats://127.0.0.1:4222", "127.0.0.1:8080"), -1) {
		if !slices.Contains(demo[m[1]], m[2]) {
			demo[m[1]] = append(demo[m[1]], m[2])
		}
	}
	if !slices.Contains(demo["lasersell"], "demo") || !slices.Contains(demo["openstream"], "arm1") || !slices.Contains(demo["openstream"], "arm2") {
		t.Fatalf("demo names %v: the demo's header changed?", demo)
	}
	patterns := []string{"S", "R", "<S>", "<R>", "*", ">"}
	otherSetups := map[string][]string{ // section heading: names it documents
		"### Local stack": {"dev", "robot1", "robot2"}, // docker-compose.yml
	}
	codeSpan := regexp.MustCompile("(?s)```.*?```|`[^`\n]+`")
	section, checked := "", 0
	text := readmeText(t)
	headings := regexp.MustCompile(`(?m)^#{2,4} .*$`)
	for _, span := range codeSpan.FindAllStringIndex(text, -1) {
		for _, h := range headings.FindAllStringIndex(text[:span[0]], -1) {
			section = text[h[0]:h[1]]
		}
		code := text[span[0]:span[1]]
		for _, i := range subject.FindAllStringSubmatchIndex(code, -1) {
			m, name := code[i[0]:i[1]], code[i[4]:i[5]]
			if strings.Contains(name, "/") {
				continue // a URL such as wss://stream.lasersell.io/v1/ws
			}
			checked++
			kind := code[i[2]:i[3]]
			if slices.Contains(demo[kind], name) || slices.Contains(patterns, name) || slices.Contains(otherSetups[section], name) {
				continue
			}
			t.Errorf("README %q: %s names %q, not a name the demo runs (%s: %s)", section, m, name, kind, strings.Join(demo[kind], ", "))
		}
	}
	if checked < 40 {
		t.Fatalf("only %d subjects and keys found in README code", checked)
	}
	compose, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range otherSetups["### Local stack"] {
		if !strings.Contains(string(compose), name) {
			t.Errorf("Local stack names %s, which docker-compose.yml does not", name)
		}
	}
}
