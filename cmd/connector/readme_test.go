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
	for _, s := range subjects.Streams() {
		if !strings.Contains(string(readme), "`"+s.Name+"`") {
			t.Errorf("stream %s is not documented in README.md", s.Name)
		}
	}
}
