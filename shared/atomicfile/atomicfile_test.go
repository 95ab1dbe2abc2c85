package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
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
