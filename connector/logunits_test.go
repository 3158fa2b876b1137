package connector_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Durations in logs carry their unit in the field name: zerolog's Dur writes a
// bare number of milliseconds ("backoff":100), so every Dur field of the
// module's non-test code is named *_ms (README, Logs), and nothing changes
// zerolog's duration unit behind those names.
func TestLoggedDurationsNameTheirUnit(t *testing.T) {
	checked := 0
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != ".." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		fset := token.NewFileSet()
		file, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(file, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "Dur" || len(n.Args) != 2 {
					return true
				}
				checked++
				lit, ok := n.Args[0].(*ast.BasicLit)
				key, err := "", error(nil)
				if ok && lit.Kind == token.STRING {
					key, err = strconv.Unquote(lit.Value)
				}
				if !ok || err != nil || !strings.HasSuffix(key, "_ms") {
					t.Errorf("%s: Dur field %s does not end in _ms (zerolog writes milliseconds without a unit)", fset.Position(n.Pos()), render(n.Args[0]))
				}
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && x.Name == "zerolog" && strings.HasPrefix(n.Sel.Name, "DurationField") {
					t.Errorf("%s: zerolog.%s changes what the *_ms fields mean", fset.Position(n.Pos()), n.Sel.Name)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("only %d Dur calls found; is the scan still walking the module?", checked)
	}
}

func render(e ast.Expr) string {
	if lit, ok := e.(*ast.BasicLit); ok {
		return lit.Value
	}
	return "(not a string literal)"
}
