package chbackup

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// overflowLimits pairs each of ClickHouse's query limits with the setting
// that says what happens when a query reaches it. In mode "break" the
// query stops early and answers what it has, without an error: a dump
// under such a limit would be a well-formed, shorter table, and the
// backup would record its row counts as the table's.
var overflowLimits = [][2]string{
	{"max_result_rows", "result_overflow_mode"},
	{"max_result_bytes", "result_overflow_mode"},
	{"max_rows_to_read", "read_overflow_mode"},
	{"max_bytes_to_read", "read_overflow_mode"},
	{"max_rows_to_read_leaf", "read_overflow_mode_leaf"},
	{"max_bytes_to_read_leaf", "read_overflow_mode_leaf"},
	{"max_execution_time", "timeout_overflow_mode"},
}

// truncating are settings that shorten every SELECT whatever the mode
// (newer servers' LIMIT and OFFSET for all queries).
var truncating = []string{"limit", "offset"}

// filtering are settings of newer servers that filter every SELECT's rows
// (a WHERE added to each table read, or to the result), whose defaults
// are the empty map and the empty expression. A dump under one is a
// well-formed table of fewer rows, and the manifest counts what the dump
// holds.
var filtering = map[string]bool{"additional_table_filters": true, "additional_result_filter": true}

// checkLimits refuses to dump under settings that would cut a dump short
// silently: a limit in "break" mode, a non-zero limit/offset, or a row
// filter, set by the backup user's profile. Limits in "throw" mode are fine: a dump that
// reaches one fails, and the run is red. Settings a server does not have
// are not checked.
func checkLimits(ctx context.Context, ch *chClient) error {
	names := slices.Clone(truncating)
	for _, p := range overflowLimits {
		names = append(names, p[0], p[1])
	}
	for n := range filtering {
		names = append(names, n)
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = "'" + n + "'"
	}
	set, err := rows[struct{ Name, Value string }](ctx, ch,
		"SELECT name AS Name, value AS Value FROM system.settings WHERE name IN ("+strings.Join(quoted, ", ")+")")
	if err != nil {
		return fmt.Errorf("read the backup user's settings: %w", err)
	}
	v := map[string]string{}
	for _, s := range set {
		v[s.Name] = s.Value
	}
	if bad := cuttingSettings(v); len(bad) > 0 {
		return fmt.Errorf("the ClickHouse user's settings would cut dumps short without an error (%s): remove them from its profile, or use overflow mode throw", strings.Join(bad, ", "))
	}
	return nil
}

// cuttingSettings lists, of the settings in v (name to value, as
// system.settings has them), those that would cut a dump short silently.
func cuttingSettings(v map[string]string) []string {
	var bad []string
	for _, p := range overflowLimits {
		if lim, ok := v[p[0]]; ok && lim != "0" && v[p[1]] == "break" {
			bad = append(bad, fmt.Sprintf("%s=%s with %s=break", p[0], lim, p[1]))
		}
	}
	for _, n := range truncating {
		if val, ok := v[n]; ok && val != "0" {
			bad = append(bad, n+"="+val)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(filtering)) {
		if val, ok := v[n]; ok && val != "" && val != "{}" {
			bad = append(bad, n+"="+val)
		}
	}
	return bad
}
