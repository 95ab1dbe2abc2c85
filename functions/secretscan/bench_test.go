package main

import (
	"testing"
)

// BenchmarkThousandMatches is GitHub's report of 1,000 of our keys, of
// four customers, from the signed request to the answer: signature
// check, parsing, 1,000 checksums and HMACs, the one revoking statement
// with its 1,000 audit rows, the admins' addresses, and the labels. Each
// iteration reports 1,000 keys minted for it, outside the timer (a
// revocation cannot be withdrawn, 0023).
func BenchmarkThousandMatches(b *testing.B) {
	f := newFixture(b, fixtureOpts{})
	var customers []string
	for range 4 {
		c, _ := f.customer()
		customers = append(customers, c.ID)
	}
	report := func() ([]byte, map[string]string) {
		var items []item
		for _, c := range customers {
			for _, k := range f.mint(c, 250) {
				items = append(items, item{k, "guardian_account_key", "https://github.com/o/r/blob/a/f", "content"})
			}
		}
		body := payload(b, items...)
		return body, f.gh.sign(b, katKeyID, body)
	}
	body, _ := report()
	if a := f.signed(body); a.status != 200 { // warm: key fetch, connections
		b.Fatalf("%d %s", a.status, a.raw)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		body, headers := report()
		b.StartTimer()
		a := post(b, f.srv.URL+Route, body, headers)
		if a.status != 200 || len(a.labels) != 1000 || a.labels[0].Label != TruePositive {
			b.Fatalf("%d %.200s", a.status, a.raw)
		}
	}
	b.StopTimer()
	if n := f.count("SELECT count(*) FROM api_keys WHERE revoked_reason = $1", RevokedReason); n != 1000*(b.N+1) {
		b.Fatalf("%d keys revoked in %d reports of 1,000", n, b.N+1)
	}
}
