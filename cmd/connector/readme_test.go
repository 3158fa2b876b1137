package main

import (
	"os"
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
// TestDemoPrintedCommandsWork runs): they must not drift apart. `go run
// ./cmd/connector` in the README stands for the `connector` binary.
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
	header := demoHeader("nats://127.0.0.1:4222", "127.0.0.1:8080")
	checked := 0
	for _, block := range strings.Split(section, "```sh\n")[1:] {
		block = block[:strings.Index(block, "```")]
		for _, cmd := range strings.Split(strings.ReplaceAll(block, "\\\n", " "), "\n") {
			if i := strings.Index(cmd, "  #"); i >= 0 {
				cmd = cmd[:i]
			}
			cmd = strings.Join(strings.Fields(strings.ReplaceAll(cmd, "go run ./cmd/connector", "connector")), " ")
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
