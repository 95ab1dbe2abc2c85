package pgbackup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLogTailRedactsBeforeItCuts puts the passphrase across the point
// where the tail is cut: redacting after the cut would leave its end.
func TestLogTailRedactsBeforeItCuts(t *testing.T) {
	const secret = "correct-horse-battery-staple-0123456789"
	r := &runner{secrets: []string{secret}}
	// tail keeps the last 1500 bytes: put the cut in the secret's middle.
	log := strings.Repeat("x", 100) + secret + strings.Repeat("y", 1500-len(secret)/2)
	path := filepath.Join(t.TempDir(), "postgres.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got := r.logTail(path)
	if strings.Contains(got, secret[len(secret)-10:]) {
		t.Fatalf("part of the secret survived: %q", got[:80])
	}
}
