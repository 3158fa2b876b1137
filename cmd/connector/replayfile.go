package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// exportFile is where `connector replay --output` writes. A regular file is
// written beside its final name and renamed into place when the replay
// completes, so a replay that fails (a typo in a filter, NATS unreachable)
// never destroys the export of the last incident; an interrupted one leaves
// what it read in <output>.partial. Anything else (a terminal, /dev/null, a
// FIFO) is written directly.
type exportFile struct {
	*os.File
	final string // the path the export ends up at; "" when written directly
}

func openExport(path string) (*exportFile, error) {
	fi, err := os.Stat(path)
	switch {
	case err == nil && !fi.Mode().IsRegular():
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return nil, err
		}
		return &exportFile{File: f}, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	final := path
	if err == nil {
		// Through a symlink: replace the file it points to, not the link.
		if final, err = filepath.EvalSymlinks(path); err != nil {
			return nil, err
		}
	}
	// 0666 as os.Create: the umask decides, as for any file the user creates.
	for i := 0; ; i++ {
		name := filepath.Join(filepath.Dir(final), fmt.Sprintf(".%s.%d.%d.partial", filepath.Base(final), os.Getpid(), i))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, fs.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			return nil, err
		}
		if fi != nil { // keep the mode of the export it replaces
			if err := f.Chmod(fi.Mode().Perm()); err != nil {
				f.Close()
				os.Remove(name)
				return nil, err
			}
		}
		return &exportFile{File: f, final: final}, nil
	}
}

// commit closes the export and moves it into place: to its final name when
// the replay completed, to <final>.partial when it was interrupted. It returns
// the path that now holds the records.
func (e *exportFile) commit(interrupted bool) (string, error) {
	if err := e.Close(); err != nil {
		return "", err
	}
	if e.final == "" {
		return e.Name(), nil
	}
	dest := e.final
	if interrupted {
		dest += ".partial"
	}
	if err := os.Rename(e.Name(), dest); err != nil {
		// Kept, not removed: it may be the only copy of what was read.
		return "", fmt.Errorf("%w (the records are in %s)", err, e.Name())
	}
	return dest, nil
}

// discard closes and removes an export the replay did not complete.
func (e *exportFile) discard() {
	e.Close()
	if e.final != "" {
		os.Remove(e.Name())
	}
}
