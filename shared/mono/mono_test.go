package mono

import (
	"math"
	"testing"
	"time"
)

func TestNanos(t *testing.T) {
	now := time.Now()
	if Nanos(now) <= 0 || Nanos(now.Add(time.Second))-Nanos(now) != int64(time.Second) {
		t.Fatalf("Nanos(now) %d, a second later %d", Nanos(now), Nanos(now.Add(time.Second)))
	}
	// A time stripped of its monotonic reading and moved an hour back on
	// the wall clock, as a clock step would move time.Now: counted on the
	// wall clock, it is an hour earlier; the monotonic count of now is not.
	stepped := now.Round(0).Add(-time.Hour)
	// (The wall and monotonic readings of one time.Now differ by a few
	// ns in their offsets from epoch's.)
	if d := time.Duration(Nanos(now) - Nanos(stepped)); d < time.Hour-time.Millisecond || d > time.Hour+time.Millisecond {
		t.Fatalf("a wall time an hour back counts %s earlier", d)
	}
	if Nanos(time.Now()) < Nanos(now) {
		t.Fatal("the count went back")
	}
	if 0 >= Nanos(epoch) || 0 >= Nanos(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatal("a mark never set is not in the past")
	}
	if far := Nanos(time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC)); far != math.MaxInt64 {
		t.Fatalf("a time past the range counts %d, want the largest", far)
	}
}
