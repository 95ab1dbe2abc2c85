package pgbackup

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/job"
)

// parseVerify is green exactly when pgBackRest said "status: ok" and
// counted nothing invalid, missing or in error; its summary counts the
// valid backups and WAL segments. The output is made of the lines
// pgBackRest prints, chosen and numbered by the fuzzer, and raw bytes
// never make it green without a "status: ok" line.
func FuzzParseVerify(f *testing.F) {
	f.Add([]byte{0, 1, 3, 7, 7, 4, 0, 0, 0, 0, 5, 9}, "")
	f.Add([]byte{0, 2, 6, 3}, "stanza: guardian\nstatus: ok\n")
	f.Add([]byte{1, 4, 0, 1, 0, 0}, "status: ok\n  backup: x, status: invalid")
	f.Fuzz(func(t *testing.T, picks []byte, raw string) {
		if _, err := parseVerify(raw); err == nil {
			lines := strings.Split(raw, "\n")
			if !slices.ContainsFunc(lines, func(l string) bool { return strings.TrimSpace(l) == "status: ok" }) || strings.Contains(raw, "status: invalid") {
				t.Fatalf("green on %q", raw)
			}
		} else if !errors.Is(err, job.ErrRed) {
			t.Fatalf("an error that is not red: %v", err)
		}

		var out strings.Builder
		ok, red := false, false
		backups, wal := 0, 0
		next := func() int {
			if len(picks) == 0 {
				return 0
			}
			b := int(picks[0])
			picks = picks[1:]
			return b
		}
		for len(picks) > 0 {
			switch next() % 8 {
			case 0:
				out.WriteString("stanza: guardian\n")
			case 1:
				out.WriteString("status: ok\n")
				ok = true
			case 2:
				out.WriteString("status: error\n")
				red = true
			case 3:
				n, m := next(), next()
				fmt.Fprintf(&out, "  archiveId: 15-1, total WAL checked: %d, total valid WAL: %d\n", n, m)
				wal += n
			case 4:
				counts := []int{next() % 3, next() % 3, next() % 3, next() % 3}
				fmt.Fprintf(&out, "    missing: %d, checksum invalid: %d, size invalid: %d, other: %d\n", counts[0], counts[1], counts[2], counts[3])
				red = red || slices.ContainsFunc(counts, func(c int) bool { return c != 0 })
			case 5:
				n := next()
				fmt.Fprintf(&out, "  backup: 20261128-%06dF, status: valid, total files checked: %d, total valid files: %d\n", n, n, n)
				backups++
			case 6:
				out.WriteString("  backup: 20261128-232049F, status: invalid, total files checked: 3, total valid files: 2\n")
				red = true
			case 7:
				out.WriteString("  No usable backup.info file\n")
			}
		}
		sum, err := parseVerify(out.String())
		switch green := ok && !red; {
		case green && err != nil:
			t.Fatalf("red on a clean verify: %v\n%s", err, out.String())
		case !green && !errors.Is(err, job.ErrRed):
			t.Fatalf("not red (%v, %q) on:\n%s", err, sum, out.String())
		case green && sum != fmt.Sprintf("%d backups and %d WAL segments valid", backups, wal):
			t.Fatalf("summary %q, want %d backups and %d WAL segments", sum, backups, wal)
		}
	})
}

// parseInfo reads any JSON without a panic; what it returns is the
// stanza asked for, its backups oldest first.
func FuzzParseInfo(f *testing.F) {
	f.Add(`[{"name":"guardian","backup":[{"label":"b","timestamp":{"stop":5}},{"label":"a","timestamp":{"stop":3}}],"status":{"code":0}}]`)
	f.Add(`[{"name":"other"}]`)
	f.Add(`{}`)
	f.Add(`[{"name":"guardian","backup":[{"database":{"repo-key":"x"}}]}]`)
	f.Fuzz(func(t *testing.T, out string) {
		info, err := parseInfo(out, "guardian")
		if err != nil {
			return
		}
		if info.Stanza != "guardian" {
			t.Fatalf("stanza %q", info.Stanza)
		}
		if !slices.IsSortedFunc(info.Backups, func(a, b BackupInfo) int { return a.Stop.Compare(b.Stop) }) {
			t.Fatalf("backups out of order: %+v", info.Backups)
		}
	})
}
