package version

import (
	"runtime/debug"
	"testing"
)

func TestLine(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		name     string
		settings []debug.BuildSetting
		want     string
	}{
		{"no VCS data", nil, "guardian 1.2.3 (no commit recorded)"},
		{"clean", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: "2026-11-30T12:00:00Z"}, {Key: "vcs.modified", Value: "false"}},
			"guardian 1.2.3 (commit 0123456789ab, 2026-11-30T12:00:00Z)"},
		{"modified", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}},
			"guardian 1.2.3 (commit 0123456789ab, with uncommitted changes)"},
		{"short revision", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}, "guardian 1.2.3 (commit abc)"},
	} {
		if got := line("1.2.3", tc.settings); got != tc.want {
			t.Errorf("%s: line = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestAsked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"x", "--version"}, true},
		{[]string{"x", "-version"}, true},
		{[]string{"x"}, false},
		{[]string{"x", "version"}, false}, // a subcommand's name in some binaries
		{[]string{"x", "--version", "more"}, false},
		{[]string{"x", "cleanup"}, false},
		{[]string{"x", "--versions"}, false},
	} {
		if got := Asked(tc.args); got != tc.want {
			t.Errorf("Asked(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}
