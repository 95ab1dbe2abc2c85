package chbackup

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// The scratch copy lives on the production ClickHouse's disks, one table
// at a time. Before a table is loaded, the disks that will hold it must
// have room for it and still keep a reserve for the live database.
const (
	// minReserve is the least free space loading may leave.
	minReserve = 1 << 30
	// reserveDivisor: loading must leave at least 1/reserveDivisor of the
	// disks' size free.
	reserveDivisor = 20
	// cipherFactor estimates a table's parts on disk from its blobs' size
	// where the live table cannot tell (gone, or empty): the blobs are
	// zstd (age adds a few bytes a chunk), ClickHouse's parts LZ4 by
	// default, which takes up to about twice zstd's room on text such as
	// Guardian's JSON payloads, and parts just inserted carry marks and
	// indexes and are not merged yet. The set's uncompressed size, the
	// estimate before, overstates the parts five- to tenfold on those
	// payloads.
	cipherFactor = 3
	// mergeFactor estimates the room a copy of a table takes while it
	// loads, over its merged size: it arrives as many unmerged parts, and
	// a merge writes its new part while the old ones stay on disk for
	// old_parts_lifetime (8 minutes by default). Merges in several rounds
	// within those minutes can take more for a while; the reserve the
	// check keeps free (a twentieth of the disks) absorbs that.
	mergeFactor = 2
)

// diskSpace is one of ClickHouse's disks, as system.disks reports it.
type diskSpace struct {
	Name  string
	Path  string
	Free  uint64
	Total uint64
}

// spaceSource is how ClickHouse tells the free space of the disks a
// table lives on.
type spaceSource int

const (
	// spaceUnknown: it cannot; tables are loaded unchecked.
	spaceUnknown spaceSource = iota
	// spaceDisks: system.disks and system.tables' data_paths (ClickHouse
	// 19.15 on, whose storage policies may spread tables over disks).
	spaceDisks
	// spaceDataPath: filesystemAvailable() and filesystemCapacity(), the
	// filesystem of ClickHouse's data path (19.1 to 19.14, which keep
	// every table under it; 18.16 has neither function).
	spaceDataPath
)

// dataPathDisk names the filesystem of ClickHouse's data path in errors.
const dataPathDisk = "(data path)"

// spaceSourceOf finds how ClickHouse can tell the free space of the disks
// a table lives on.
func spaceSourceOf(ctx context.Context, ch *chClient) (spaceSource, error) {
	n, err := one[struct{ N string }](ctx, ch, "SELECT toString(count()) AS N FROM system.columns WHERE database = 'system'"+
		" AND (table = 'disks' AND name IN ('path', 'free_space', 'total_space') OR table = 'tables' AND name = 'data_paths')")
	if err != nil {
		return spaceUnknown, fmt.Errorf("look for system.disks: %w", err)
	}
	if n.N == "4" {
		return spaceDisks, nil
	}
	if n, err = one[struct{ N string }](ctx, ch, "SELECT toString(count()) AS N FROM system.functions"+
		" WHERE name IN ('filesystemAvailable', 'filesystemCapacity')"); err != nil {
		return spaceUnknown, fmt.Errorf("look for filesystemAvailable: %w", err)
	}
	if n.N == "2" {
		return spaceDataPath, nil
	}
	return spaceUnknown, nil
}

// tableSpace returns the disks that hold db.table, or ok false when they
// cannot be told (spaceUnknown) or told apart (a data path on no disk
// ClickHouse lists).
func (s spaceSource) tableSpace(ctx context.Context, ch *chClient, db, table string) (disks []diskSpace, ok bool, err error) {
	switch s {
	case spaceDisks:
		return tableDisks(ctx, ch, db, table)
	case spaceDataPath:
		d, err := one[struct{ Free, Total string }](ctx, ch, "SELECT toString(filesystemAvailable()) AS Free, toString(filesystemCapacity()) AS Total")
		if err != nil {
			return nil, false, fmt.Errorf("read the free space of ClickHouse's data path: %w", err)
		}
		free, err1 := strconv.ParseUint(d.Free, 10, 64)
		total, err2 := strconv.ParseUint(d.Total, 10, 64)
		if err1 != nil || err2 != nil {
			return nil, false, fmt.Errorf("ClickHouse's data path reports %q free of %q", d.Free, d.Total)
		}
		return []diskSpace{{Name: dataPathDisk, Free: free, Total: total}}, true, nil
	}
	return nil, false, nil
}

// tableDisks returns the disks of system.disks that hold db.table, or ok
// false when they cannot be told apart (a data path on no disk ClickHouse
// lists).
func tableDisks(ctx context.Context, ch *chClient, db, table string) (disks []diskSpace, ok bool, err error) {
	paths, err := rows[struct{ P string }](ctx, ch, "SELECT arrayJoin(data_paths) AS P FROM system.tables WHERE database = "+
		quoteString(db)+" AND name = "+quoteString(table))
	if err != nil {
		return nil, false, fmt.Errorf("read the data paths of %s: %w", table, err)
	}
	raw, err := rows[struct{ Name, Path, Free, Total string }](ctx, ch,
		"SELECT name AS Name, path AS Path, toString(free_space) AS Free, toString(total_space) AS Total FROM system.disks")
	if err != nil {
		return nil, false, fmt.Errorf("read system.disks: %w", err)
	}
	all := make([]diskSpace, 0, len(raw))
	for _, d := range raw {
		free, err1 := strconv.ParseUint(d.Free, 10, 64)
		total, err2 := strconv.ParseUint(d.Total, 10, 64)
		if err1 != nil || err2 != nil {
			return nil, false, fmt.Errorf("system.disks: disk %s reports %q free of %q", d.Name, d.Free, d.Total)
		}
		all = append(all, diskSpace{Name: d.Name, Path: d.Path, Free: free, Total: total})
	}
	ps := make([]string, len(paths))
	for i, p := range paths {
		ps[i] = p.P
	}
	disks, ok = disksOf(ps, all)
	return disks, ok, nil
}

// disksOf returns the disks that hold paths, each path's disk being the
// one whose path is the longest prefix of it; ok is false when a path is
// on none, or there is no path.
func disksOf(paths []string, disks []diskSpace) ([]diskSpace, bool) {
	var out []diskSpace
	seen := map[string]bool{}
	for _, p := range paths {
		best := -1
		for i, d := range disks {
			dp := strings.TrimSuffix(d.Path, "/") + "/"
			if strings.HasPrefix(strings.TrimSuffix(p, "/")+"/", dp) && (best < 0 || len(d.Path) > len(disks[best].Path)) {
				best = i
			}
		}
		if best < 0 {
			return nil, false
		}
		if !seen[disks[best].Name] {
			seen[disks[best].Name] = true
			out = append(out, disks[best])
		}
	}
	return out, len(out) > 0
}

// partsSize is the size on disk and rows of a table's active parts; ok is
// false where it has none.
type partsSize struct {
	bytes, rows uint64
	ok          bool
}

// liveTableSize returns the size of db.table's active parts, as
// system.parts reports them (18.16 too).
func liveTableSize(ctx context.Context, ch *chClient, db, table string) (partsSize, error) {
	r, err := one[struct{ B, R, N string }](ctx, ch, "SELECT toString(sum(bytes_on_disk)) AS B, toString(sum(rows)) AS R, toString(count()) AS N"+
		" FROM system.parts WHERE active AND database = "+quoteString(db)+" AND table = "+quoteString(table))
	if err != nil {
		return partsSize{}, fmt.Errorf("read the size of %s: %w", table, err)
	}
	bytes, err1 := strconv.ParseUint(r.B, 10, 64)
	rows, err2 := strconv.ParseUint(r.R, 10, 64)
	n, err3 := strconv.ParseUint(r.N, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return partsSize{}, fmt.Errorf("system.parts: table %s reports %q bytes, %q rows in %q parts", table, r.B, r.R, r.N)
	}
	return partsSize{bytes: bytes, rows: rows, ok: n > 0 && bytes > 0}, nil
}

// scratchSize estimates the room tm's scratch copy takes on ClickHouse's
// disks, and says from what: the live table's size on disk (live), for
// the set's rows where both it and the set count rows, as the copy is
// made with the same statement (codecs included) from the same kind of
// data, times mergeFactor; else the set's blobs' size times cipherFactor. Either is capped
// at the set's uncompressed size, more than ClickHouse's compressed parts
// take.
func scratchSize(tm TableManifest, live partsSize) (need uint64, basis string) {
	var plain, cipher, rows uint64
	for _, b := range tm.Blobs {
		plain = addCapped(plain, uint64(max(b.PlainBytes, 0)))
		cipher = addCapped(cipher, uint64(max(b.CipherBytes, 0)))
		rows = addCapped(rows, b.Rows)
	}
	switch {
	case live.ok && live.rows > 0:
		need, basis = scaled(scaled(live.bytes, rows, live.rows), mergeFactor, 1), "twice the live table's size on disk for the set's rows (merges)"
	case live.ok:
		need, basis = scaled(live.bytes, mergeFactor, 1), "twice the live table's size on disk (merges)"
	default:
		need, basis = scaled(cipher, cipherFactor, 1), "the set's compressed size"
	}
	if plain < need {
		need, basis = plain, "the set's uncompressed size"
	}
	return need, basis
}

// scaled is n*num/den without overflow, capped at the largest uint64;
// den must not be 0.
func scaled(n, num, den uint64) uint64 {
	hi, lo := bits.Mul64(n, num)
	if hi >= den {
		return math.MaxUint64
	}
	q, _ := bits.Div64(hi, lo, den)
	return q
}

// checkRoom refuses to load table when its copy, need bytes (scratchSize,
// estimated from basis) plus a tenth, would leave disks with less than a
// twentieth of their size, and at least minReserve, free. The refusal is
// a plain error: the backup could not be checked here.
func checkRoom(table string, need uint64, basis string, disks []diskSpace) error {
	var free, total uint64
	names := make([]string, len(disks))
	for i, d := range disks {
		free, total = addCapped(free, d.Free), addCapped(total, d.Total)
		names[i] = d.Name
	}
	reserve := max(total/reserveDivisor, minReserve)
	want := addCapped(addCapped(need, need/10), reserve)
	if free >= want {
		return nil
	}
	return fmt.Errorf("table %s: not loaded: its scratch copy needs about %s (from %s) and ClickHouse's disk %s has %s free, of which %s must stay free for the live database",
		table, iec(addCapped(need, need/10)), basis, strings.Join(names, ", "), iec(free), iec(reserve))
}

// addCapped adds without wrapping: remote disks report the largest value.
func addCapped(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// iec prints n bytes in binary units.
func iec(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + string("KMGTPE"[exp]) + "iB"
}
