// Package mono turns times into nanosecond counts on the monotonic clock,
// for marks kept in atomic integers ("skip this until", "last logged
// at"): UnixNano would follow steps of the wall clock, and a step back
// would stretch every such wait by as much.
package mono

import (
	"math"
	"time"
)

// epoch is the process's start, with its monotonic reading.
var epoch = time.Now()

// past is added to every count, so that a mark never set (zero) lies a
// century before any time the process sees (tests' fixed dates too).
const past = int64(100 * 365 * 24 * time.Hour)

// Nanos is t as nanoseconds after the process's start on the monotonic
// clock, when t has a monotonic reading (as time.Now's times do, and
// times Add derives from them); otherwise on the wall clock, which is
// what tests' fixed times ask for. Times beyond the int64 range saturate.
func Nanos(t time.Time) int64 {
	d := int64(t.Sub(epoch)) // itself saturated at ±292 years
	if d > math.MaxInt64-past {
		return math.MaxInt64
	}
	return d + past
}
