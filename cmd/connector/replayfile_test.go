package main

import (
	"os"
	"path/filepath"
	"testing"
)

func writeExport(t *testing.T, path, content string, interrupted bool) string {
	t.Helper()
	e, err := openExport(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.WriteString(content); err != nil {
		t.Fatal(err)
	}
	got, err := e.commit(interrupted)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The export file: replaced only by a completed replay, with the mode the
// user would get from os.Create (or the mode of the file it replaces),
// through symlinks, and written directly when it is not a regular file.
func TestReplayExportFile(t *testing.T) {
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref")
	if f, err := os.Create(ref); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	refInfo, _ := os.Stat(ref)

	out := filepath.Join(dir, "exits.ndjson")
	if got := writeExport(t, out, "first\n", false); got != out || readString(t, out) != "first\n" {
		t.Fatalf("new export at %s: %q", got, readString(t, out))
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != refInfo.Mode().Perm() {
		t.Fatalf("new export mode %v, os.Create gives %v", fi.Mode().Perm(), refInfo.Mode().Perm())
	}

	// Interrupted: the earlier export stays, what was read is in .partial.
	if got := writeExport(t, out, "cut", true); got != out+".partial" || readString(t, out) != "first\n" || readString(t, got) != "cut" {
		t.Fatalf("interrupted export at %s; export %q", got, readString(t, out))
	}

	// Failed: the earlier export stays and nothing is left behind.
	e, err := openExport(out)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = e.WriteString("never")
	e.discard()
	if readString(t, out) != "first\n" {
		t.Fatalf("a discarded export changed the earlier one: %q", readString(t, out))
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*.partial")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}

	// A completed replay replaces it, keeping its mode.
	if err := os.Chmod(out, 0o600); err != nil {
		t.Fatal(err)
	}
	writeExport(t, out, "second\n", false)
	if fi, _ := os.Stat(out); readString(t, out) != "second\n" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("replaced export %q mode %v", readString(t, out), fi.Mode().Perm())
	}

	// Through a symlink: the target is replaced, the link stays a link.
	link := filepath.Join(dir, "latest.ndjson")
	if err := os.Symlink(out, link); err != nil {
		t.Fatal(err)
	}
	writeExport(t, link, "third\n", false)
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 || readString(t, out) != "third\n" {
		t.Fatalf("symlinked export: link mode %v, target %q", fi.Mode(), readString(t, out))
	}

	// Not a regular file: written directly.
	if got := writeExport(t, os.DevNull, "x", false); got != os.DevNull {
		t.Fatalf("%s export committed to %s", os.DevNull, got)
	}
}
