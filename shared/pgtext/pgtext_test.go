package pgtext

import (
	"strings"
	"testing"
)

func TestClean(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"plain", 10, "plain"},
		{"a\x00b", 10, "a\uFFFDb"},
		{"caf\xe9", 10, "caf\uFFFD"},
		{"\xff\xfe", 10, "\uFFFD"},
		{"\xe2\x82", 10, "\uFFFD"},
		{"ééé", 5, "éé"}, // cut on a character boundary
		{strings.Repeat("x", 20), 8, "xxxxxxxx"},
		{"ab\xffcd", 4, "ab"}, // U+FFFD does not fit whole after "ab"
	} {
		got := Clean(tc.in, tc.n)
		if got != tc.want || !Valid(got) || len(got) > tc.n {
			t.Errorf("Clean(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func FuzzClean(f *testing.F) {
	f.Add("a\x00\xff", 3)
	f.Fuzz(func(t *testing.T, s string, n int) {
		if n < 0 || n > 1<<16 {
			return
		}
		got := Clean(s, n)
		if !Valid(got) || len(got) > n {
			t.Fatalf("Clean(%q, %d) = %q", s, n, got)
		}
		if Valid(s) && len(s) <= n && got != s {
			t.Fatalf("Clean changed storable %q to %q", s, got)
		}
	})
}
