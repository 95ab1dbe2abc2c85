// Package pgtext makes what a client sent storable in a PostgreSQL text
// column. PostgreSQL refuses, for the whole statement, a string that is
// not UTF-8 or that holds a NUL byte; clients can send both (a path with
// %00 or %ff, a user agent with Latin-1 bytes), and a value cut at a byte
// limit can end inside a character.
package pgtext

import (
	"strings"
	"unicode/utf8"
)

// Clean returns s with bytes that are not UTF-8 and NUL characters each
// replaced by U+FFFD, cut to at most n bytes on a character boundary.
func Clean(s string, n int) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 && len(s) <= n {
		return s
	}
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// Valid reports whether PostgreSQL's text type can hold s.
func Valid(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }
