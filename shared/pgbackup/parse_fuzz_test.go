package pgbackup

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

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

// parseInfo maps every field of the stanza asked for, wherever it stands
// among others: the fuzzer picks the stanzas, their backups (in any
// order, equal stops too) and each field's value; pgBackRest's JSON is
// written from them with its own key names, and what parseInfo returns
// must be exactly those backups, ordered by stop, equal stops in the
// order given.
func FuzzParseInfoFields(f *testing.F) {
	// Two stanzas, the first asked for, with three backups, two of them
	// stopping together, and two repositories.
	f.Add([]byte{1, 0, 3, 1, 1, 7, 2, 9, 8, 7, 6, 5, 4, 1, 2, 1, 6, 3, 2, 5, 4, 3, 2, 1, 1, 3, 0, 9,
		0, 2, 0, 1, 8, 8, 8, 8, 1, 1, 2, 2, 1, 2, 0, 2, 1, 1, 2, 1})
	// Three stanzas, the last asked for, after one with backups of its own.
	f.Add([]byte{2, 2, 1, 0, 0, 5, 1, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 4, 0, 2, 1, 4, 3, 7, 6, 5, 4, 3, 2, 1, 0, 1})
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, picks []byte) {
		next := func() int64 {
			if len(picks) == 0 {
				return 0
			}
			b := picks[0]
			picks = picks[1:]
			return int64(b)
		}
		stanzas := 1 + int(next()%3)
		target := int(next()) % stanzas
		var doc []map[string]any
		var want []BackupInfo
		var wantRepos []RepoStatus
		for s := range stanzas {
			name := fmt.Sprintf("other%d", s)
			if s == target {
				name = "guardian"
			}
			var backups, repos []map[string]any
			var mine []BackupInfo
			for i := range int(next() % 5) {
				b := BackupInfo{
					Repo: int(next() % 3), Label: fmt.Sprintf("%s-%d", name, i), Type: []string{"full", "diff", "incr"}[next()%3],
					// Each number ends in its own digit, so no two fields
					// can be taken for each other.
					Start: time.Unix(next()*1000+1, 0).UTC(), Stop: time.Unix(next()%4*1000, 0).UTC(),
					Size: next()<<20*10 + 2, Delta: next()<<10*10 + 3, RepoSize: next()<<16*10 + 4, RepoDelta: next()<<8*10 + 5,
					WALStart: fmt.Sprintf("W%d", next()), WALStop: fmt.Sprintf("X%d", next()), Error: next()%2 == 1,
				}
				if b.Type != "full" {
					b.Prior = fmt.Sprintf("P%d", next())
				}
				mine = append(mine, b)
				backups = append(backups, map[string]any{
					"label": b.Label, "type": b.Type, "prior": b.Prior, "error": b.Error,
					"database": map[string]any{"id": 1, "repo-key": b.Repo},
					"archive":  map[string]any{"start": b.WALStart, "stop": b.WALStop},
					"info": map[string]any{"size": b.Size, "delta": b.Delta,
						"repository": map[string]any{"size": b.RepoSize, "delta": b.RepoDelta}},
					"timestamp": map[string]any{"start": b.Start.Unix(), "stop": b.Stop.Unix()},
				})
			}
			var mineRepos []RepoStatus
			for k := range int(next() % 3) {
				r := RepoStatus{Repo: k + 1, Cipher: []string{"none", "aes-256-cbc"}[next()%2], Status: Status{Code: int(next() % 3), Message: "m"}}
				mineRepos = append(mineRepos, r)
				repos = append(repos, map[string]any{"key": r.Repo, "cipher": r.Cipher, "status": map[string]any{"code": r.Status.Code, "message": r.Status.Message}})
			}
			st := Status{Code: int(next() % 3), Message: name}
			doc = append(doc, map[string]any{"name": name, "backup": backups, "repo": repos, "status": map[string]any{"code": st.Code, "message": st.Message}})
			if s == target {
				want, wantRepos = mine, mineRepos
				slices.SortStableFunc(want, func(a, b BackupInfo) int { return a.Stop.Compare(b.Stop) })
			}
		}
		out, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		info, err := parseInfo(string(out), "guardian")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if info.Stanza != "guardian" || info.Status.Message != "guardian" {
			t.Fatalf("stanza %q, status %+v", info.Stanza, info.Status)
		}
		if !slices.Equal(info.Backups, want) && !(len(info.Backups) == 0 && len(want) == 0) {
			t.Fatalf("backups\n got %+v\nwant %+v\nfrom %s", info.Backups, want, out)
		}
		if !slices.Equal(info.Repos, wantRepos) && !(len(info.Repos) == 0 && len(wantRepos) == 0) {
			t.Fatalf("repos %+v, want %+v", info.Repos, wantRepos)
		}
	})
}
