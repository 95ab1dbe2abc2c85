package chbackup

import (
	"context"
	"fmt"
	"math"
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
)

// diskSpace is one of ClickHouse's disks, as system.disks reports it.
type diskSpace struct {
	Name  string
	Path  string
	Free  uint64
	Total uint64
}

// canMeasureSpace reports whether ClickHouse can tell the free space of
// the disks a table lives on: system.disks and system.tables' data_paths
// (ClickHouse 19.15 on; 18.16 has neither).
func canMeasureSpace(ctx context.Context, ch *chClient) (bool, error) {
	n, err := one[struct{ N string }](ctx, ch, "SELECT toString(count()) AS N FROM system.columns WHERE database = 'system'"+
		" AND (table = 'disks' AND name IN ('path', 'free_space', 'total_space') OR table = 'tables' AND name = 'data_paths')")
	if err != nil {
		return false, fmt.Errorf("look for system.disks: %w", err)
	}
	return n.N == "4", nil
}

// tableSpace returns the disks that hold db.table, or ok false when they
// cannot be told apart (a data path on no disk ClickHouse lists).
func tableSpace(ctx context.Context, ch *chClient, db, table string) (disks []diskSpace, ok bool, err error) {
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

// checkRoom refuses to load table when its copy, need bytes (its size in
// the manifest: uncompressed Native, more than ClickHouse's compressed
// parts take, plus a tenth for marks and indexes), would leave disks with
// less than a twentieth of their size, and at least minReserve, free.
func checkRoom(table string, need uint64, disks []diskSpace) error {
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
	return red("table %s: not loaded: its scratch copy needs about %s and ClickHouse's disk %s has %s free, of which %s must stay free for the live database",
		table, iec(addCapped(need, need/10)), strings.Join(names, ", "), iec(free), iec(reserve))
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
