package chbackup

import (
	"strings"
	"testing"
	"time"
)

// The names that decide a DROP DATABASE: a scratch database's name is
// never the live database's, the names scratchName makes are the
// database's scratch names, not expired before their deadline and its
// grace, expired after; the live database is never expired, whatever it
// is called.
func FuzzScratchNames(f *testing.F) {
	f.Add("guardian", "restore_verify_0123456789ab", int64(1796090268), []byte("abcdef"))
	f.Add("restore_verify_0123456789ab", "restore_verify_0123456789ab", int64(0), []byte{})
	f.Add("g", "restore_verify_6d4b3a2c_1796090268_0123456789ab", int64(-5), []byte{1, 2, 3, 4, 5, 6, 7})
	f.Fuzz(func(t *testing.T, db, name string, unix int64, random []byte) {
		now := time.Unix(1_700_000_000+unix%(1<<32), 0) // runs happen after 2023
		if IsScratchOf(db, name) && (name == db || !strings.HasPrefix(name, "restore_verify_")) {
			t.Fatalf("%q is taken for a scratch database of %q", name, db)
		}
		for _, at := range []time.Time{now, now.Add(-time.Hour), now.Add(time.Hour)} {
			if scratchExpired(db, db, at) {
				t.Fatalf("the live database %q counts as an expired scratch database", db)
			}
		}
		var r [6]byte
		copy(r[:], random)
		deadline := now.Add(time.Duration(unix%3600+3600) * time.Second)
		made := scratchName(db, deadline, r)
		if !IsScratchOf(db, made) && made != db {
			t.Fatalf("%q, made for %q, is not one of its scratch names", made, db)
		}
		if made != db && (scratchExpired(db, made, deadline.Add(scratchGrace)) || !scratchExpired(db, made, deadline.Add(scratchGrace+2*time.Second))) {
			t.Fatalf("%q (deadline %v): expired before its deadline and grace, or not after", made, deadline)
		}
	})
}
