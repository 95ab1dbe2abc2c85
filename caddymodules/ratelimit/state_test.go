package ratelimit

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

// slowZero is the redis_up gauge taking its time to go to 0, so that an
// answer can come between a failure's mark and its gauge.
type slowZero struct{ prometheus.Gauge }

func (g slowZero) Set(v float64) {
	if v == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	g.Gauge.Set(v)
}

// The redis_up gauge says what the down mark says, however a failure and
// a newer answer interleave: a failure that set 0 after an answer had
// cleared its mark left the gauge at 0 for good while Redis was healthy.
func TestRedisUpGaugeFollowsTheMark(t *testing.T) {
	// Not parallel: it swaps the shared redis_up gauge.
	gauge := metrics.redisUp
	metrics.redisUp = slowZero{gauge}
	t.Cleanup(func() { metrics.redisUp = gauge })
	l, _ := newTestLimiter(t)
	began := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.degrade(began, errors.New("timeout"))
	}()
	for l.downUntil.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	l.answered(began.Add(time.Second)) // while the gauge is on its way to 0
	<-done
	if l.downUntil.Load() != 0 || testutil.ToFloat64(gauge) != 1 {
		t.Fatalf("after a newer answer: marked down %v, gauge %v", l.downUntil.Load() != 0, testutil.ToFloat64(gauge))
	}

	// Nor may a failure whose mark an answer of a later call missed (it
	// looked before the mark was set) leave Redis marked down: raced,
	// the newer answer wins every time.
	metrics.redisUp = gauge
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
