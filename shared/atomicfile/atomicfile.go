// Package atomicfile replaces a file so that a reader, or the file system
// after a crash, sees the old content or the new, never a mix: the data
// goes to a temporary file in the same directory, is flushed to disk, and
// is renamed over the target, and then the directory itself is flushed so
// the rename survives a power loss.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Write replaces path with data, mode perm. prepare, if not nil, runs on
// the temporary file's name before the rename (e.g. to chown it), so the
// file never appears with the wrong owner. On error path is untouched and
// no temporary file is left behind. Errors name the file.
//
// A temporary file of path's that a killed writer left (older than
// staleAfter) is removed first, so that kills cannot fill the directory.
func Write(path string, data []byte, perm os.FileMode, prepare func(tmp string) error) error {
	dir := filepath.Dir(path)
	removeStale(dir, filepath.Base(path), time.Now().Add(-staleAfter))
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	err = write(tmp, data, perm)
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil && prepare != nil {
		err = prepare(tmp.Name())
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}

func write(f *os.File, data []byte, perm os.FileMode) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	return f.Sync()
}

// staleAfter is how old another writer's temporary file must be to count
// as left by a killed one: far longer than a write of these small files
// takes, so a concurrent writer's file is never taken from under it.
const staleAfter = time.Hour

// removeStale removes the temporary files of base in dir (those Write
// names: "." + base + "." + digits + ".tmp") last changed before cutoff.
// It is best effort: a file it cannot remove is left for the next write.
func removeStale(dir, base string, cutoff time.Time) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	prefix := "." + base + "."
	for _, e := range entries {
		name := e.Name()
		middle, ok := strings.CutPrefix(name, prefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if middle, ok = strings.CutSuffix(middle, ".tmp"); !ok || middle == "" || strings.Trim(middle, "0123456789") != "" {
			continue // another file's, or not a temporary file
		}
		if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
			_ = os.Remove(filepath.Join(dir, name))
		}
	}
}
