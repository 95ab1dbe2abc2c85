package audit

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/pgtext"
)

// FuzzSpoolSegment reads segments of any bytes (torn, damaged, overlong
// lines), and a row's line with one bit flipped (damage on disk). It
// yields, in order and in batches of n (the last smaller), the rows of the
// whole lines that decode to rows PostgreSQL would take, and counts the
// other whole lines as damaged;
// the torn end is dropped. Every row it yields passes checkRow: a row
// PostgreSQL refuses would fail the replay at every tick while the spool
// fills. Rows the spool wrote read back as they were, with damage (whole
// lines) between them or not.
func FuzzSpoolSegment(f *testing.F) {
	line := func(r *audit.Row) string {
		b, err := json.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		return string(b) + "\n"
	}
	a, b := fuzzRow("curl/8", "/api/v1/keys", `{"n":1}`), fuzzRow("", "/", "{}")
	for _, seg := range []string{
		"",
		line(a) + line(b),
		line(a) + "{\"Path\":\"/damaged\n" + line(b) + line(a)[:40],
		line(a) + "\n\n" + "[]\n" + strings.Replace(line(b), `"Result"`, `"Result`, 1),
		"\xff\xfe\n" + line(b),
		// The least of a row: what checkRow requires, and no more.
		`{"RequestID":"r","Method":"GET","Action":"read","Result":"success","StatusCode":200,"Metadata":"{}"}` + "\n",
	} {
		f.Add([]byte(seg), uint8(2), "ua", "/p", `{"k":"v"}`, uint16(0))
	}
	f.Add([]byte(line(a)), uint8(0), "\x00\xff", "/\xe2\x82", `{"a":[1,2,{"b":null}]}`, uint16(8))
	// One spool for the run: a directory per input would spend the
	// fuzzer's time on the file system.
	dir := f.TempDir()
	s, err := openSpool(dir, 1<<30)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.close() })
	f.Fuzz(func(t *testing.T, segment []byte, batch uint8, ua, path, metadata string, flip uint16) {
		n := int(batch%8) + 1
		// The segment as it is, and a row's line with one bit flipped.
		row := fuzzRow(ua, path, metadata)
		if checkRow(row) != nil {
			row.Metadata = "{}" // metadata that is no JSON object is refused before the spool
		}
		damaged, err := json.Marshal(row)
		if err != nil {
			t.Fatal(err)
		}
		// Spread: the fuzzer moves flip in small steps.
		bit := int(uint64(flip) * 2654435761 % uint64(8*len(damaged)))
		damaged[bit/8] ^= 1 << (bit % 8)
		for _, seg := range [][]byte{segment, append(damaged, '\n')} {
			name := "seg-damaged.jsonl"
			if err := os.WriteFile(filepath.Join(dir, name), seg, 0o600); err != nil {
				t.Fatal(err)
			}
			want, wantCorrupt := segmentRows(seg)
			got, corrupt := readBatches(t, s, name, n)
			if corrupt != wantCorrupt || !sameRows(got, want) {
				t.Fatalf("segment %q: %d rows, %d damaged; want %d rows, %d damaged", seg, len(got), corrupt, len(want), wantCorrupt)
			}
			for _, r := range got {
				if err := checkRow(r); err != nil {
					t.Fatalf("segment %q yields a row PostgreSQL refuses (%v): %+v", seg, err, r)
				}
			}
			if err := s.remove(name); err != nil {
				t.Fatal(err)
			}
		}

		// Rows the spool writes, with damage between them that ends its
		// line, read back as written.
		first := []*audit.Row{row, fuzzRow("", "/", "{}")}
		second := []*audit.Row{fuzzRow(path, ua, "{}")}
		if err := s.append(first); err != nil {
			t.Fatal(err)
		}
		damage := segment
		if len(damage) > 0 && damage[len(damage)-1] != '\n' {
			damage = append(damage[:len(damage):len(damage)], '\n')
		}
		if _, err := s.cur.Write(damage); err != nil {
			t.Fatal(err)
		}
		if err := s.append(second); err != nil {
			t.Fatal(err)
		}
		written := s.curName
		if err := s.seal(); err != nil {
			t.Fatal(err)
		}
		between, _ := segmentRows(damage)
		got, _ := readBatches(t, s, written, n)
		if want := append(append(first, between...), second...); !sameRows(got, want) {
			t.Fatalf("rows written around %q read back as %d rows, want %d", damage, len(got), len(want))
		}
		if err := s.remove(written); err != nil {
			t.Fatal(err)
		}
	})
}

// fuzzRow is a row the writer would take, with client text cleaned as the
// handler cleans it.
func fuzzRow(ua, path, metadata string) *audit.Row {
	return &audit.Row{
		OccurredAt: time.Date(2026, 12, 1, 12, 0, 0, 123456000, time.UTC), SourceIP: "203.0.113.9",
		UserAgent: pgtext.Clean(ua, 512), RequestID: "req-" + pgtext.Clean(path, 64) + "-1", Method: "GET", Path: pgtext.Clean(path, 2048),
		Action: "read", Result: "success", StatusCode: 200, Metadata: metadata,
		WriterID: "w-1", WriterSeq: 7, PrevHash: []byte{1, 2}, RowHash: []byte{3, 4}, CustomerDigest: []byte{0},
	}
}

// segmentRows is what a segment holds, read independently of each: its
// whole lines that decode as rows PostgreSQL would take, and how many
// whole lines do not.
func segmentRows(segment []byte) ([]*audit.Row, int) {
	var rows []*audit.Row
	damaged := 0
	for {
		i := bytes.IndexByte(segment, '\n')
		if i < 0 {
			return rows, damaged // the rest is torn
		}
		line := segment[:i+1]
		segment = segment[i+1:]
		var r audit.Row
		if len(line) > maxSpoolLine || json.Unmarshal(line, &r) != nil {
			damaged++
			continue
		}
		// A row PostgreSQL would refuse is damage too (checkRow mirrors
		// the table's constraints and column types: copy.go).
		if checkRow(&r) != nil || !pgtext.Valid(r.WriterID) {
			damaged++
			continue
		}
		rows = append(rows, &r)
	}
}

// readBatches reads a segment in batches of n, checking their sizes.
func readBatches(t *testing.T, s *spool, name string, n int) ([]*audit.Row, int) {
	t.Helper()
	var all []*audit.Row
	var sizes []int
	corrupt, err := s.each(name, n, func(rows []*audit.Row) error {
		sizes = append(sizes, len(rows))
		all = append(all, rows...)
		return nil
	})
	if err != nil {
		t.Fatalf("each: %v", err)
	}
	for i, size := range sizes {
		if size < 1 || size > n || (size < n && i < len(sizes)-1) {
			t.Fatalf("batches of %v, want %d each but the last", sizes, n)
		}
	}
	return all, corrupt
}

func sameRows(a, b []*audit.Row) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		ja, err1 := json.Marshal(a[i])
		jb, err2 := json.Marshal(b[i])
		if err1 != nil || err2 != nil || !bytes.Equal(ja, jb) {
			return false
		}
	}
	return true
}
