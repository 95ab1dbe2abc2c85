package audit

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// fakeLog is an audit log held in memory, answering verifyQuery (its rows
// in order) and the count of unchained rows (none), so that walks over
// tampered chains need no PostgreSQL.
type fakeLog []Row

func (l fakeLog) Query(_ context.Context, sql string, _ ...any) (pgx.Rows, error) {
	if strings.Contains(sql, "count(*)") {
		return &fakeRows{count: true}, nil
	}
	return &fakeRows{rows: l}, nil
}

type fakeRows struct {
	rows  []Row
	i     int
	count bool
}

func (f *fakeRows) Close()                                       {}
func (f *fakeRows) Err() error                                   { return nil }
func (f *fakeRows) CommandTag() pgconn.CommandTag                { return pgconn.CommandTag{} }
func (f *fakeRows) FieldDescriptions() []pgconn.FieldDescription { return nil }
func (f *fakeRows) Values() ([]any, error)                       { return nil, nil }
func (f *fakeRows) RawValues() [][]byte                          { return nil }
func (f *fakeRows) Conn() *pgx.Conn                              { return nil }

func (f *fakeRows) Next() bool {
	f.i++
	if f.count {
		return f.i == 1
	}
	return f.i <= len(f.rows)
}

func (f *fakeRows) Scan(d ...any) error {
	if f.count {
		*d[0].(*int64) = 0
		return nil
	}
	r := f.rows[f.i-1]
	*d[0].(*int64) = int64(f.i)
	*d[1].(*string), *d[2].(*string), *d[3].(*time.Time) = r.KeyID, r.UserID, r.OccurredAt
	*d[4].(*string), *d[5].(*string), *d[6].(*string) = r.SourceIP, r.UserAgent, r.RequestID
	*d[7].(*string), *d[8].(*string), *d[9].(*string), *d[10].(*string) = r.Method, r.Path, r.ResourceType, r.ResourceID
	*d[11].(*string), *d[12].(*string), *d[13].(*int16), *d[14].(*string) = r.Action, r.Result, int16(r.StatusCode), r.Metadata
	*d[15].(*string), *d[16].(*int64), *d[17].(*[]byte), *d[18].(*[]byte) = r.WriterID, r.WriterSeq, r.PrevHash, r.RowHash
	*d[19].(*string), *d[20].(*[]byte) = r.CustomerID, r.CustomerDigest
	return nil
}

func (f *fakeRows) TypeMap() *pgtype.Map { return nil }

// linked is writer w's rows for seqs, chained from prev, each row's path
// named by label.
func linked(w string, prev []byte, label string, seqs ...int64) []Row {
	var out []Row
	for _, s := range seqs {
		r := Row{OccurredAt: time.Unix(1_800_000_000+s, 0).UTC(), Method: "DELETE", Path: fmt.Sprintf("/%s/%d", label, s), Action: "delete",
			Result: "success", StatusCode: 204, Metadata: "{}", CustomerDigest: UnknownCustomer, WriterID: w, WriterSeq: s, PrevHash: prev}
		r.RowHash = Hash(&r)
		prev = r.RowHash
		out = append(out, r)
	}
	return out
}

func span(a, b int64) []int64 {
	var s []int64
	for i := a; i <= b; i++ {
		s = append(s, i)
	}
	return s
}

func cat(parts ...[]Row) []Row {
	var out []Row
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// walk verifies log against kept and the breaks an operator accepted.
func walk(t *testing.T, log []Row, kept Heads, accepted []Break) Report {
	t.Helper()
	return walkWith(t, log, Customers{}, kept, accepted)
}

// walkWith is walk with the customers that exist.
func walkWith(t *testing.T, log []Row, customers Customers, kept Heads, accepted []Break) Report {
	t.Helper()
	var list strings.Builder
	for _, b := range accepted {
		list.WriteString(b.Entry() + "\n")
	}
	a, err := ParseAccepted(strings.NewReader(list.String()))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyAccepting(context.Background(), fakeLog(log), customers, kept, a)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestAnAcceptedBreakStillGuardsItsChain: a break an operator accepted is
// pinned to the rows before it and to its own row, so that the chain's
// rows stay as guarded as any other's: removing, recomputing or inserting
// rows before it, or editing its row again, turns the run red.
func TestAnAcceptedBreakStillGuardsItsChain(t *testing.T) {
	t.Parallel()
	full := linked("w", nil, "orig", span(1, 10)...)
	kept := walk(t, full, nil, nil).NextHeads(nil)

	// Rows 4-6 lost (a damaged spool): a gap at 7, investigated and accepted.
	gapped := cat(full[:3], full[6:])
	first := walk(t, gapped, kept, nil)
	if first.OK() || first.Breaks[0].Reason != "gap" {
		t.Fatalf("the gap: %+v", first.Breaks)
	}
	gap := first.Breaks
	accepted := walk(t, gapped, kept, gap)
	if !accepted.OK() || len(accepted.Accepted) != 1 {
		t.Fatalf("the accepted gap: %+v", accepted.Breaks)
	}
	kept = accepted.NextHeads(kept)

	forgedInGap := linked("w", full[2].RowHash, "forged", 4, 5) // INSERT alone does it
	for name, log := range map[string][]Row{
		"rows before the gap removed":    full[6:],
		"rows before the gap recomputed": cat(linked("w", nil, "forged", 1, 2, 3), full[6:]),
		"rows inserted into the gap":     cat(full[:3], forgedInGap, full[6:]),
	} {
		if rep := walk(t, log, kept, gap); rep.OK() {
			t.Errorf("%s: the run is green", name)
		}
	}

	// Row 5 edited (no re-hash): a content break, accepted.
	edited := cat(full)
	edited[4].Path = "/edited-once"
	content := walk(t, edited, nil, nil).Breaks
	if len(content) != 1 || content[0].Reason != "content" {
		t.Fatalf("the edit: %+v", content)
	}
	if rep := walk(t, edited, nil, content); !rep.OK() {
		t.Fatalf("the accepted edit: %+v", rep.Breaks)
	}
	again := cat(edited)
	again[4].Path = "/edited-twice"
	if rep := walk(t, again, nil, content); rep.OK() {
		t.Error("the row edited again: the run is green")
	}
	// The rows before it recomputed, and its prev_hash set to match.
	prefix := linked("w", nil, "forged", 1, 2, 3, 4)
	relinked := cat(prefix, edited[4:])
	relinked[4].PrevHash = prefix[3].RowHash
	if rep := walk(t, relinked, nil, content); rep.OK() {
		t.Error("the rows before an accepted edit recomputed: the run is green")
	}
	// A break elsewhere in the chain is still reported.
	later := cat(edited)
	later[8].Path = "/another-edit"
	if rep := walk(t, later, nil, content); rep.OK() || rep.Breaks[0].WriterSeq != 9 {
		t.Errorf("a second edit after an accepted one: %+v", rep.Breaks)
	}
}

// TestAnAcceptedMoveBetweenLogsIsPinnedToWhereTheRowIs: a row taken out
// of its customer's log, investigated and accepted, may not then be moved
// into a third customer's log unseen (the row hash covers the customer's
// digest, not customer_id, so the pin names the id too).
func TestAnAcceptedMoveBetweenLogsIsPinnedToWhereTheRowIs(t *testing.T) {
	t.Parallel()
	const a, c = "0a000000-0000-4000-8000-00000000000a", "0c000000-0000-4000-8000-00000000000c"
	saltA, saltC := []byte("salt of a"), []byte("salt of c")
	customers := Customers{salted: map[string][]byte{a: SaltedCustomerDigest(saltA, a), c: SaltedCustomerDigest(saltC, c)}, live: map[string]bool{}}
	for id, salt := range map[string][]byte{a: saltA, c: saltC} {
		customers.live[string(SaltedCustomerDigest(salt, id))] = true
		customers.live[string(CustomerDigest(id))] = true
	}
	var log []Row
	var prev []byte
	for s := int64(1); s <= 3; s++ {
		r := Row{OccurredAt: time.Unix(1_800_000_000+s, 0).UTC(), Method: "GET", Path: "/x", Action: "read", Result: "success", StatusCode: 200,
			Metadata: "{}", CustomerID: a, CustomerDigest: SaltedCustomerDigest(saltA, a), WriterID: "w", WriterSeq: s, PrevHash: prev}
		r.RowHash = Hash(&r)
		prev = r.RowHash
		log = append(log, r)
	}
	if rep := walkWith(t, log, customers, nil, nil); !rep.OK() {
		t.Fatalf("clean: %+v", rep.Breaks)
	}
	log[1].CustomerID = "" // out of a's log
	moved := walkWith(t, log, customers, nil, nil).Breaks
	if len(moved) != 1 || moved[0].Reason != "customer" {
		t.Fatalf("the move: %+v", moved)
	}
	if rep := walkWith(t, log, customers, nil, moved); !rep.OK() {
		t.Fatalf("the accepted move: %+v", rep.Breaks)
	}
	log[1].CustomerID = c // then into c's
	if rep := walkWith(t, log, customers, nil, moved); rep.OK() {
		t.Fatal("a row accepted as moved out of a log was moved into another unseen")
	}
}
