package identity

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

func TestNewRequestIDIsTimeOrderedAndUnique(t *testing.T) {
	hexID := regexp.MustCompile(`^[0-9a-f]{32}$`)
	before := time.Now().UnixMilli()
	seen := map[string]bool{}
	prev := ""
	for range 10000 {
		id := NewRequestID()
		if !hexID.MatchString(id) {
			t.Fatalf("id %q is not 32 lower-case hex digits", id)
		}
		if seen[id] {
			t.Fatalf("id %q made twice", id)
		}
		seen[id] = true
		if prev != "" && id[:12] < prev[:12] {
			t.Fatalf("id %q sorts before the earlier %q", id, prev)
		}
		prev = id
	}
	after := time.Now().UnixMilli()
	ms, err := strconv.ParseInt(prev[:12], 16, 64)
	if err != nil || ms < before || ms > after {
		t.Fatalf("id %q does not start with the time in ms (%d..%d): %d %v", prev, before, after, ms, err)
	}
}
