package main

import (
	"context"
	"testing"
)

// BenchmarkThousandMatches is GitHub's report of 1,000 of our keys, of
// four customers, from the signed request to the answer: signature
// check, parsing, 1,000 checksums and HMACs, the one revoking statement
// with its 1,000 audit rows, the admins' addresses, and the labels. The
// keys are made valid again between iterations, outside the timer.
func BenchmarkThousandMatches(b *testing.B) {
	f := newFixture(b, fixtureOpts{})
	var items []item
	for range 4 {
		c, _ := f.customer()
		for _, k := range f.mint(c.ID, 250) {
			items = append(items, item{k, "guardian_account_key", "https://github.com/o/r/blob/a/f", "content"})
		}
	}
	body := payload(b, items...)
	headers := f.gh.sign(b, katKeyID, body)
	if a := f.signed(body); a.status != 200 { // warm: key fetch, connections
		b.Fatalf("%d %s", a.status, a.raw)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if _, err := f.pg.Owner.Exec(context.Background(), "UPDATE api_keys SET revoked_at = NULL, revoked_reason = NULL"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		a := post(b, f.srv.URL+Route, body, headers)
		if a.status != 200 || len(a.labels) != 1000 || a.labels[0].Label != TruePositive {
			b.Fatalf("%d %.200s", a.status, a.raw)
		}
	}
	b.StopTimer()
	if n := f.count("SELECT count(*) FROM api_keys WHERE revoked_reason = $1", RevokedReason); n != 1000 {
		b.Fatalf("the last iteration revoked %d keys", n)
	}
}
