package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteReplacesWithModeAndLeavesNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "heads.json")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	var prepared string
	if err := Write(path, []byte("new"), 0o640, func(tmp string) error {
		prepared = tmp
		if b, err := os.ReadFile(tmp); err != nil || string(b) != "new" {
			t.Errorf("prepare saw %q (%v), want the new content", b, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "new" {
		t.Fatalf("read %q (%v), want new", b, err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	if filepath.Dir(prepared) != dir {
		t.Errorf("temporary file %s is not beside the target", prepared)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the target", len(entries))
	}
}

func TestFailedPrepareLeavesTheOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgbackrest.conf")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("chown refused")
	err := Write(path, []byte("new"), 0o640, func(string) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err %v, want the prepare error", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("target holds %q, want it untouched", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want no temporary file left", len(entries))
	}
}

func TestMissingDirectoryIsAnErrorNamingTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "metrics.prom")
	err := Write(path, []byte("x"), 0o644, nil)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err %v, want not-exist", err)
	}
}

// A temporary file a killed writer left is removed by the next write once
// it is stale; a recent one (a writer at work), other files' temporary
// files and look-alikes stay.
func TestStaleTemporaryFilesAreRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "job.prom")
	old := time.Now().Add(-2 * staleAfter)
	files := map[string]bool{ // name: removed
		".job.prom.123456.tmp":     true,
		".job.prom.987.tmp":        false, // recent: kept
		".job.prom.x1.tmp":         false, // not Write's name
		".job.prom.tmp":            false,
		".job.prom.other.12.tmp":   false, // "job.prom.other"'s
		".job.prom.other.prom.tmp": false,
		"job.prom.123.tmp":         false,
		".other.prom.555.tmp":      false,
		".job.prom.12.tmp.keep":    false,
		".job.prom.4242424242.tmp": true,
	}
	for name := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if name != ".job.prom.987.tmp" {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := Write(path, []byte("new"), 0o644, nil); err != nil {
		t.Fatal(err)
	}
	for name, removed := range files {
		if _, err := os.Stat(filepath.Join(dir, name)); os.IsNotExist(err) != removed {
			t.Errorf("%s: removed %v, want %v", name, os.IsNotExist(err), removed)
		}
	}
}
