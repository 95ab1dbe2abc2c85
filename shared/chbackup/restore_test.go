package chbackup

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Restore loads the latest set into a new database beside the live one,
// table for table and row for row, never into a database that exists (the
// live one above all), and stops at a blob that does not match its
// manifest.
func TestRestoreLoadsTheLatestSetIntoANewDatabase(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	info := f.backup(t)
	db := f.cfg.ClickHouse.Database
	into := db + "_restored"
	t.Cleanup(func() { _ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+into) })

	rep, err := Restore(context.Background(), f.cfg, into, f.id)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK || rep.Set != info.Name || rep.Into != into || rep.Tables != info.Tables || rep.Rows != info.Rows {
		t.Fatalf("report %+v for set %+v", rep, info)
	}
	for _, table := range []string{"snapshots", "alert_history", "schema_migrations"} {
		if live, restored := f.count(t, db+"."+table), f.count(t, into+"."+table); live == 0 || live != restored {
			t.Errorf("%s: %d rows live, %d restored", table, live, restored)
		}
	}
	if n := f.count(t, into+".snapshots WHERE payload LIKE '%"+canary+"%'"); n != 1000 {
		t.Errorf("restored snapshots hold the canary %d times, want 1000", n)
	}

	for _, name := range []string{into, db, "system", "restore_verify_x", "bad-name", ""} {
		if _, err := Restore(context.Background(), f.cfg, name, f.id); err == nil {
			t.Errorf("restore into %q was not refused", name)
		}
	}
	if live := f.count(t, db+".snapshots"); live != 1000 {
		t.Fatalf("the live database holds %d snapshots after the refusals", live)
	}

	// A blob changed on the backup host stops the restore, which says why.
	m := f.manifest(t, 0, info.Name)
	blob := filepath.Join(f.root[0], info.Name, m.Tables[0].Blobs[0].File)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(blob, b, 0o600); err != nil {
		t.Fatal(err)
	}
	other := db + "_restored2"
	t.Cleanup(func() { _ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+other) })
	if _, err := Restore(context.Background(), f.cfg, other, f.id); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("restore of a damaged set: %v", err)
	}
}
