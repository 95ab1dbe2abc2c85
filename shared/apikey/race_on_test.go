//go:build race

package apikey

// raceEnabled: under the race detector sync.Pool drops a quarter of its
// Puts on purpose, so tests that count allocations of pooled paths skip.
const raceEnabled = true
