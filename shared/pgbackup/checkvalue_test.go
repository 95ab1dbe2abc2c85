package pgbackup

import (
	"errors"
	"math/big"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/glassmkr/guardian/shared/job"
)

// A restore check passes on an answer that says the database holds
// something, and is red on one that says it holds nothing.
func TestCheckValue(t *testing.T) {
	cases := []struct {
		v    any
		text string
		red  bool
	}{
		{int64(42), "42", false},
		{int64(0), "0", true},
		{int32(0), "0", true},
		{int16(3), "3", false},
		{float64(0), "0", true},
		{1.5, "1.5", false},
		{true, "true", false},
		{false, "false", true},
		{"", "", true},
		{"canary", "canary", false},
		{nil, "NULL", true},
		{pgtype.Numeric{Int: big.NewInt(0), Valid: true}, "0", true},
		{pgtype.Numeric{Int: big.NewInt(12), Exp: -1, Valid: true}, "1.2", false},
		{pgtype.Numeric{Int: big.NewInt(1), Exp: -400, Valid: true}, "", false}, // past float64, not zero
		{uint32(0), "0", true},
	}
	for _, tc := range cases {
		text, err := checkValue(tc.v)
		if (tc.text != "" && text != tc.text) || (err != nil) != tc.red || (err != nil && !errors.Is(err, job.ErrRed)) {
			t.Errorf("%#v: %q, %v; want %q, red %t", tc.v, text, err, tc.text, tc.red)
		}
	}
}
