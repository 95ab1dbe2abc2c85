// Package plan holds what each customer plan includes, so the code that
// applies a plan (ingest stamping a snapshot's retention, the retention
// sweep enforcing it) reads one rule.
package plan

// Names of the plans (customers.plan).
const (
	Free = "free"
	Pro  = "pro"
)

// SnapshotDays returns how many days each plan keeps snapshots (security
// posture, "Data retention"), as a fresh map the caller may keep.
func SnapshotDays() map[string]int {
	return map[string]int{Free: 7, Pro: 90}
}

// SnapshotRetention is how many days plan p keeps snapshots; a plan this
// code does not know gets Free's, the shortest.
func SnapshotRetention(p string) int {
	if d, ok := SnapshotDays()[p]; ok {
		return d
	}
	return SnapshotDays()[Free]
}
