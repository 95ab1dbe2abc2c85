package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/job"
)

// allLabels lists the rows of the tables the fixture's seed writes.
func (f *fixture) allLabels(t *testing.T) string {
	t.Helper()
	return fmt.Sprint(f.labels(t, "snapshots", "payload"), f.labels(t, "alert_history", "alert_id"), f.labels(t, "analyses", "body"))
}

// mutations counts the mutations of the test's database.
func (f *fixture) mutations(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	if err := f.ch.Conn.QueryRow(context.Background(), "SELECT count() FROM system.mutations WHERE database = ?", f.ch.Database).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A clock far ahead (a year: a bad RTC, a wrong NTP source) would make
// every partition expired. With snapshots received yesterday it cannot be
// right: the run is red, says why, and deletes nothing at all.
func TestSweepDeletesNothingByAClockFarAheadOfTheData(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	f.seed(t)
	before := f.allLabels(t)
	for _, ahead := range []time.Duration{365 * day, 98 * day} {
		res, err := f.movedClock(DefaultMaxDrops, DefaultMaxMutations).Run(ctx, f.now.Add(ahead))
		if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "newest snapshot received") {
			t.Fatalf("%s ahead: %v, want red naming the newest snapshot", ahead, err)
		}
		if res.Clock == nil || res.Clock.Refused == "" || res.Clock.NewestReceived == nil || res.Done() {
			t.Errorf("%s ahead: clock %+v, done %v", ahead, res.Clock, res.Done())
		}
		if tot := res.Totals(); tot.PartitionsDropped+tot.MutationsIssued != 0 {
			t.Errorf("%s ahead: %+v", ahead, tot)
		}
	}
	if after := f.allLabels(t); after != before {
		t.Errorf("rows deleted by a clock far ahead:\n%v\nwant\n%v", after, before)
	}
	if n := f.mutations(t); n != 0 {
		t.Errorf("%d mutations issued by a clock far ahead", n)
	}
	// Within the margin (the newest snapshot 96 days old by this clock),
	// the clock is believed and the sweep does its work.
	if res, err := f.movedClock(DefaultMaxDrops, DefaultMaxMutations).Run(ctx, f.now.Add(95*day)); err != nil || res.Totals().PartitionsDropped == 0 {
		t.Fatalf("95 days ahead: %+v, %v", res.Totals(), err)
	}
	f.waitMutations(t)
}

// The servers' clocks and the sweep's must agree: a sweep an hour ahead
// of ClickHouse's, or PostgreSQL's, deletes nothing.
func TestSweepDeletesNothingWhenTheServersClocksDisagree(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	f.seed(t)
	before := f.allLabels(t)

	s := f.sweeper(DefaultMaxDrops, DefaultMaxMutations)
	res, err := s.Run(ctx, f.now.Add(time.Hour))
	if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "ClickHouse's") || res.Clock.ClickHouse == nil {
		t.Fatalf("an hour ahead of ClickHouse: %v (clock %+v)", err, res.Clock)
	}
	pgBehind := func(context.Context) (time.Time, error) { return f.now.Add(-time.Hour), nil }
	s.PostgreSQLNow = pgBehind
	if _, err := s.Run(ctx, f.now); !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "PostgreSQL's") {
		t.Fatalf("an hour ahead of PostgreSQL: %v", err)
	}
	if after := f.allLabels(t); after != before || f.mutations(t) != 0 {
		t.Errorf("rows deleted while the clocks disagreed:\n%v\nwant\n%v", after, before)
	}

	// PostgreSQL's clock that cannot be read is not compared: as without
	// the plans, the sweep goes on and the run fails so it is noticed.
	s.PostgreSQLNow = func(context.Context) (time.Time, error) { return time.Time{}, errors.New("postgres is down") }
	res, err = s.Run(ctx, f.now)
	if err == nil || errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "PostgreSQL's clock") || res.Totals().PartitionsDropped == 0 {
		t.Fatalf("PostgreSQL's clock unreadable: %+v, %v", res.Totals(), err)
	}
	f.waitMutations(t)
}

// The data check cannot hold a system that is quiet: one whose newest
// snapshot arrived 92 days ago has its last rows deleted, and once its
// table is empty there is nothing to compare with, whatever the clock.
// Nor an empty database (a first install).
func TestClockCheckLetsAnIdleSystemEmptyItself(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	res, err := f.sweeper(10, 10).Run(ctx, f.now)
	if err != nil || res.Clock == nil || res.Clock.NewestReceived != nil {
		t.Fatalf("empty database: %+v, %v", res.Clock, err)
	}
	f.insertSnapshots(t, []snapshot{{f.pro, 90, 92 * day, "pro/92"}, {f.free, 7, 92*day + time.Hour, "free/92"}})
	if _, err := f.sweeper(10, 10).Run(ctx, f.now); err != nil {
		t.Fatal(err)
	}
	f.waitMutations(t)
	if got := f.labels(t, "snapshots", "payload"); len(got) != 0 {
		t.Fatalf("snapshots left: %v", got)
	}
	// Years later, nothing holds the clock back.
	res, err = f.movedClock(10, 10).Run(ctx, f.now.AddDate(3, 0, 0))
	if err != nil || res.Clock.NewestReceived != nil || res.Clock.Refused != "" {
		t.Fatalf("an empty table years later: %+v, %v", res.Clock, err)
	}
}

func TestClockVerdict(t *testing.T) {
	now := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	cases := []struct {
		name string
		c    ClockCheck
		skew time.Duration
		want string // a part of the verdict; "" for none
	}{
		{"all agree, snapshots a minute old", ClockCheck{ClickHouse: at(time.Second), PostgreSQL: at(-time.Second), NewestReceived: at(-time.Minute)}, 10 * time.Minute, ""},
		{"ClickHouse 11 minutes behind", ClockCheck{ClickHouse: at(-11 * time.Minute)}, 10 * time.Minute, "ClickHouse's"},
		{"PostgreSQL 11 minutes ahead", ClockCheck{ClickHouse: at(0), PostgreSQL: at(11 * time.Minute)}, 10 * time.Minute, "PostgreSQL's"},
		{"servers not compared", ClockCheck{ClickHouse: at(-48 * time.Hour)}, 0, ""},
		{"no snapshot: nothing to compare with", ClockCheck{ClickHouse: at(0)}, 10 * time.Minute, ""},
		{"newest snapshot 96 days old: a quiet system", ClockCheck{NewestReceived: at(-96 * day)}, 0, ""},
		{"newest snapshot 97 days old, to the second", ClockCheck{NewestReceived: at(-97 * day)}, 0, ""},
		{"newest snapshot 97 days and a second old", ClockCheck{NewestReceived: at(-97*day - time.Second)}, 0, "97 days past"},
	}
	for _, c := range cases {
		got := clockVerdict(now, c.c, c.skew, 90)
		if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
