package ratelimit

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// An answer to a call begun before the latest failure's call says less
// about Redis now than that failure: it must not clear the down mark
// (limiting by Redis would resume against a Redis that just failed). An
// answer to a later call does.
func TestAnOlderAnswerDoesNotClearANewerFailure(t *testing.T) {
	// Not parallel: it moves the shared redis_up gauge.
	l, _ := newTestLimiter(t)
	base := time.Now()
	l.degrade(base.Add(10*time.Second), errors.New("timeout"))
	l.answered(base.Add(9 * time.Second))
	if l.downUntil.Load() == 0 || testutil.ToFloat64(metrics.redisUp) != 0 {
		t.Fatalf("an answer older than the failure cleared the mark (gauge %v)", testutil.ToFloat64(metrics.redisUp))
	}
	l.answered(base.Add(11 * time.Second))
	if l.downUntil.Load() != 0 || testutil.ToFloat64(metrics.redisUp) != 1 {
		t.Fatalf("a newer answer left Redis marked down (gauge %v)", testutil.ToFloat64(metrics.redisUp))
	}
}

// The redis_up gauge says what the down marks say, however a failure and
// a newer answer interleave: a failure that set 0 after an answer had
// cleared its mark once left the gauge at 0 for good while Redis was
// healthy. The gauge is now read from the marks.
func TestRedisUpGaugeFollowsTheMark(t *testing.T) {
	// Not parallel: it reads the shared redis_up gauge.
	gauge := metrics.redisUp
	l, _ := newTestLimiter(t)
	began := time.Now()
	// A failure whose mark an answer of a later call missed (it looked
	// before the mark was set) may not leave Redis marked down: raced,
	// the newer answer wins every time.
	for i := range 20_000 {
		began := began.Add(time.Duration(i+1) * time.Minute)
		var start, wg sync.WaitGroup
		start.Add(1)
		wg.Add(2)
		go func() {
			defer wg.Done()
			start.Wait()
			l.degrade(began, errors.New("timeout"))
		}()
		go func() {
			defer wg.Done()
			start.Wait()
			l.answered(began.Add(time.Second))
		}()
		start.Done()
		wg.Wait()
		if l.downUntil.Load() != 0 || testutil.ToFloat64(gauge) != 1 {
			t.Fatalf("round %d: after a newer answer: marked down %v, gauge %v", i, l.downUntil.Load() != 0, testutil.ToFloat64(gauge))
		}
	}
}

// A reload that replaces the limiter (a new timeout, say) must not leave
// redis_up at the old limiter's 0: the new one may never fail, and so
// never write the gauge itself.
func TestRedisUpForgetsAReplacedLimiter(t *testing.T) {
	// Not parallel: it reads the shared redis_up gauge.
	old, _ := newTestLimiter(t)
	old.degrade(time.Now(), errors.New("timeout"))
	if v := testutil.ToFloat64(metrics.redisUp); v != 0 {
		t.Fatalf("redis_up %v while a limiter has Redis marked down", v)
	}
	replacement, _ := newTestLimiter(t)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	replacement.answered(time.Now())
	if v := testutil.ToFloat64(metrics.redisUp); v != 1 {
		t.Fatalf("redis_up %v after the degraded limiter was replaced by a healthy one", v)
	}
}
