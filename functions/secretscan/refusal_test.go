package main

import (
	"errors"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The route is public: refused signatures are logged at most once per
// refusalLogEvery, each line counting the refusals since the last.
func TestRefusedSignaturesAreLoggedSparingly(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	h := &handler{log: zap.New(core)}
	for range 5 {
		h.logRefusal("kid", "203.0.113.9", errors.New("bad"))
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("5 refusals at once logged %d lines, want 1", n)
	}
	h.refusals.Pass() // the interval has passed
	h.logRefusal("kid", "203.0.113.9", errors.New("bad"))
	all := logs.All()
	if len(all) != 2 || all[1].ContextMap()["refused"] != int64(5) {
		t.Fatalf("after the interval: %d lines, the last %v; want a second line counting 5", len(all), all[len(all)-1].ContextMap())
	}
}
