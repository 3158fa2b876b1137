package connector_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The core knows no upstream protocol: no file of package connector (tests
// aside) imports a kind's package or names an upstream, its streams, its
// buckets or its status detail keys. A kind is added without touching it.
func TestCoreKnowsNoUpstream(t *testing.T) {
	names := regexp.MustCompile(`(?i)lasersell|open ?stream|hi6|hello_ok|"limits"|detail\["`)
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for i, line := range strings.Split(string(src), "\n") {
			if m := names.FindString(line); m != "" {
				t.Errorf("%s:%d names %q: %s", f, i+1, m, strings.TrimSpace(line))
			}
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range parsed.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, "github.com/jetbridge/connector/connector/") || strings.HasPrefix(path, "github.com/jetbridge/connector/examples/") {
				t.Errorf("%s imports %s: the core must not depend on a kind", f, path)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("only %d core files checked", checked)
	}
}
