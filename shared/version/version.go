// Package version is the release version stamped into every Guardian
// binary, so that what runs can be matched to a signed release.
//
// Every binary answers `--version` (Caddy and guardianctl also `version`
// forms of their own) with one line: the version, the commit it was built
// from, the commit's time, and whether the tree had uncommitted changes.
// A release build sets Version with the linker (deploy/release/build.sh);
// `-ldflags` are not recorded in the binary's build information under
// -trimpath, so asking the binary is the way to read it.
package version

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// Version is the release version, set by the release build with
// -ldflags "-X github.com/glassmkr/guardian/shared/version.Version=x.y.z".
// Any other build says "devel".
var Version = "devel"

// Line describes the running binary in one line, e.g.
// "guardian 1.2.3 (commit 0123456789ab, 2026-11-30T12:00:00Z)".
func Line() string {
	return line(Version, readSettings())
}

func readSettings() []debug.BuildSetting {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return bi.Settings
}

func line(v string, settings []debug.BuildSetting) string {
	var rev, at string
	modified := false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		return "guardian " + v + " (no commit recorded)"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	parts := []string{"commit " + rev}
	if at != "" {
		parts = append(parts, at)
	}
	if modified {
		parts = append(parts, "with uncommitted changes")
	}
	return fmt.Sprintf("guardian %s (%s)", v, strings.Join(parts, ", "))
}

// Asked reports whether a command line asks only for the version:
// a sole "--version" or "-version" argument.
func Asked(args []string) bool {
	return len(args) == 2 && (args[1] == "--version" || args[1] == "-version")
}

// ExitIfAsked prints Line and exits 0 when the process's command line asks
// for the version; otherwise it returns. Binaries call it first, before
// they seal themselves, take locks or read settings, so that asking a
// binary its version never does anything else.
func ExitIfAsked() {
	if Asked(os.Args) {
		Print(os.Stdout)
		os.Exit(0)
	}
}

// Print writes Line and a newline to w.
func Print(w io.Writer) {
	fmt.Fprintln(w, Line())
}
