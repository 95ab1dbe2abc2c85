package health

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRunNamesEveryFailingCheck(t *testing.T) {
	var logged []string
	rep := Run(context.Background(), map[string]Check{
		"postgres": func(context.Context) error { return nil },
		"redis":    func(context.Context) error { return errors.New("dial tcp: refused") },
		"slow": func(ctx context.Context) error {
			<-ctx.Done() // a hung dependency is cut by the timeout
			return ctx.Err()
		},
	}, 50*time.Millisecond, func(name string, err error) { logged = append(logged, name) })

	if rep.OK() {
		t.Fatal("report is OK with failing checks")
	}
	if got := rep.Summary(); got != "redis and slow are down" {
		t.Errorf("summary = %q", got)
	}
	if rep.Checks["postgres"].Status != "up" || rep.Checks["redis"].Status != "down" || rep.Checks["slow"].Status != "down" {
		t.Errorf("checks = %+v", rep.Checks)
	}
	if len(logged) != 2 {
		t.Errorf("onErr called for %v", logged)
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		failing []string
		want    string
	}{
		{nil, "all dependencies are up"},
		{[]string{"redis"}, "redis is down"},
		{[]string{"clickhouse", "postgres", "redis"}, "clickhouse, postgres and redis are down"},
	} {
		if got := (Report{Failing: tc.failing}).Summary(); got != tc.want {
			t.Errorf("Summary(%v) = %q, want %q", tc.failing, got, tc.want)
		}
	}
}
