package main

import (
	"context"
	"fmt"
	"time"

	"github.com/glassmkr/guardian/shared/job"
)

// The sweep deletes as of the wall clock, and a dropped partition cannot
// be brought back: a clock far ahead (a bad RTC at boot, a wrong NTP
// source) would make every partition look expired. So before it deletes
// anything, a run checks its clock two ways, and when either fails it
// deletes nothing and is red.
//
//  1. ClickHouse's now() and PostgreSQL's (PostgreSQLNow) must agree with
//     it within MaxClockSkew. On one host they all read the same clock;
//     on several, NTP keeps them within a second.
//  2. It must not be past the newest snapshot's longest possible life:
//     the newest received_at of snapshots, plus the snapshots rule's Days
//     (90), plus clockMargin (7 days). On a correct clock no row outlives
//     that: ingest stores a snapshot only within a day of its timestamp,
//     and the sweep removes the last rows a day after they expire. A
//     clock far ahead is caught: ingest refuses every snapshot as too old
//     (more than a day behind its clock), so received_at stays at the
//     time of the jump.
//
// Rule 2 cannot block a healthy system. A quiet day or month, or an idle
// customer, leave the newest received_at far younger than 97 days; an
// empty snapshots table (a first install) gives nothing to compare with,
// and the check is skipped; a system idle for months has its last
// snapshots deleted by the sweep at 90 days, and from then on its table is
// empty. What rule 2 cannot catch is a clock ahead by less than Days plus
// the margin: past a day ahead, every collector's push is refused
// (invalid_snapshot, too old), which shows at once, but the sweep would
// still delete that much early. Waiting for time synchronisation (the
// units' After=time-sync.target) guards that.

// DefaultMaxClockSkew is how far the servers' clocks may be from the
// sweep's before it deletes nothing.
const DefaultMaxClockSkew = 10 * time.Minute

// clockMargin is how long past the newest snapshot's longest possible
// life a clock may be before the sweep distrusts it: runs missed or
// failed in between, a pending mutation.
const clockMargin = 7 * 24 * time.Hour

// The table and column whose newest value tells how far the data reaches.
const (
	clockTable  = "snapshots"
	clockColumn = "received_at"
)

// ClockCheck is what a run compared its clock with before deleting.
type ClockCheck struct {
	ClickHouse *time.Time `json:"clickhouse_now,omitempty"`
	PostgreSQL *time.Time `json:"postgresql_now,omitempty"`
	// NewestReceived is the newest snapshots' received_at; nil when
	// there is none.
	NewestReceived *time.Time `json:"newest_snapshot_received_at,omitempty"`
	// Refused says why the run deleted nothing; "" when it went ahead.
	Refused string `json:"refused,omitempty"`
}

// checkClock fills in what the run's clock is compared with and decides
// (see the rules above). It returns an error wrapping job.ErrRed when the
// run must delete nothing, and any other error when ClickHouse could not
// be asked. PostgreSQL's clock that cannot be read is not compared: the
// sweep goes on without PostgreSQL (stored retention still applies), and
// that failure is returned as soft, for the run to report.
func (s *Sweeper) checkClock(ctx context.Context, now time.Time, cols map[string]map[string]bool) (c ClockCheck, soft, err error) {
	var ch time.Time
	if err := s.CH.QueryRow(ctx, "SELECT now()").Scan(&ch); err != nil {
		return c, nil, fmt.Errorf("read ClickHouse's clock: %w", err)
	}
	c.ClickHouse = &ch
	if s.PostgreSQLNow != nil {
		if pg, err := s.PostgreSQLNow(ctx); err != nil {
			soft = fmt.Errorf("read PostgreSQL's clock: %w", err)
		} else {
			c.PostgreSQL = &pg
		}
	}
	days := s.ruleDays(clockTable)
	if days > 0 && cols[clockTable][clockColumn] && cols[clockTable]["ts"] {
		newest, err := s.newestReceived(ctx)
		if err != nil {
			return c, soft, err
		}
		c.NewestReceived = newest
	}
	c.Refused = clockVerdict(now, c, s.MaxClockSkew, days)
	if c.Refused != "" {
		return c, soft, fmt.Errorf("%w: nothing deleted: %s", job.ErrRed, c.Refused)
	}
	return c, soft, nil
}

// ruleDays is the Days of table's rule; 0 when it has none.
func (s *Sweeper) ruleDays(table string) int {
	for _, r := range s.Rules {
		if r.Table == table {
			return r.Days
		}
	}
	return 0
}

// clockVerdict returns why now cannot be trusted to delete by, or "".
func clockVerdict(now time.Time, c ClockCheck, maxSkew time.Duration, days int) string {
	for _, srv := range []struct {
		name string
		at   *time.Time
	}{{"ClickHouse", c.ClickHouse}, {"PostgreSQL", c.PostgreSQL}} {
		if maxSkew > 0 && srv.at != nil && absDuration(srv.at.Sub(now)) > maxSkew {
			return fmt.Sprintf("the sweep's clock (%s) and %s's (%s) differ by more than %s; fix the clocks (timedatectl, NTP), and the next run catches up",
				stamp(now), srv.name, stamp(*srv.at), maxSkew)
		}
	}
	if c.NewestReceived != nil {
		if limit := c.NewestReceived.AddDate(0, 0, days).Add(clockMargin); now.After(limit) {
			return fmt.Sprintf("the clock (%s) is %d days past the newest snapshot received (%s), which no snapshot outlives by more than %d days on a correct clock; "+
				"if the clock is wrong, fix it (timedatectl, NTP); if it is right, the snapshots left are overdue: delete them by hand",
				stamp(now), int(now.Sub(*c.NewestReceived)/(24*time.Hour)), stamp(*c.NewestReceived), days)
		}
	}
	return ""
}

// newestReceived returns the newest received_at among the snapshots of
// the last day of timestamps, or nil for an empty table. The newest
// timestamp comes from system.parts (no data read), and the partition key
// keeps the query to the newest partitions. Those rows were received at
// or after their timestamps (ingest refuses one more than minutes in its
// future), and no row outlives the newest timestamp plus Days: so this
// serves rule 2 as well as the whole column's maximum would, without
// reading the whole column.
func (s *Sweeper) newestReceived(ctx context.Context) (*time.Time, error) {
	var newestTS time.Time
	if err := s.CH.QueryRow(ctx, "SELECT max(max_time) FROM system.parts WHERE database = ? AND table = ? AND active AND rows > 0",
		s.Database, clockTable).Scan(&newestTS); err != nil {
		return nil, fmt.Errorf("read the newest snapshot's day: %w", err)
	}
	if newestTS.Unix() <= 0 {
		return nil, nil
	}
	var newest time.Time
	q := fmt.Sprintf("SELECT max(%s) FROM %s.%s WHERE ts >= toDateTime(%d)", clockColumn, s.Database, clockTable, newestTS.Add(-24*time.Hour).Unix())
	if err := s.CH.QueryRow(ctx, q).Scan(&newest); err != nil {
		return nil, fmt.Errorf("read the newest snapshot's %s: %w", clockColumn, err)
	}
	if newest.Unix() <= 0 {
		return nil, nil
	}
	return &newest, nil
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
