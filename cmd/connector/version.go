package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// version is the release, reported by the command services (NATS micro wants
// semantic versions) and first by `connector version`.
const version = "0.1.0"

// revision is the source revision the binary was built from, stamped by the
// Dockerfile (-ldflags "-X main.revision=..."); empty in other builds, which
// take it from the Go toolchain's VCS stamp when there is one.
var revision string

// versionLine is what `connector version` prints: the release, then the
// revision (with "+modified" for a dirty checkout) and the Go version.
func versionLine() string {
	rev, modified, goVersion := revision, false, ""
	if info, ok := debug.ReadBuildInfo(); ok {
		goVersion = info.GoVersion
		for _, s := range info.Settings {
			switch {
			case s.Key == "vcs.revision" && rev == "":
				rev = s.Value
			case s.Key == "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	var extra []string
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if modified {
			rev += "+modified"
		}
		extra = append(extra, "revision "+rev)
	}
	if goVersion != "" {
		extra = append(extra, goVersion)
	}
	if len(extra) == 0 {
		return version
	}
	return fmt.Sprintf("%s (%s)", version, strings.Join(extra, ", "))
}
