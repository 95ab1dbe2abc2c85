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

// Bounds every plan has, so that one account cannot grow its rows, and
// the lists that return them whole, without end. Each is far above what
// an account uses; the API refuses past them with 409 limit_reached
// (sessions: the least recently used one ends instead).
const (
	// MaxServers is the most servers an account may have enrolled.
	MaxServers = 10_000
	// MaxAccountKeys is the most account keys an account may have
	// working at once (keys rotated away count until their grace ends).
	MaxAccountKeys = 100
	// MaxSessionsPerUser is the most sessions a user may have open; a
	// sign-in past it ends the one used least recently.
	MaxSessionsPerUser = 50
)
