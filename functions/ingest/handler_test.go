package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/plan"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestParseRefusesBadSnapshots(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name, body, detail string
	}{
		{"empty body", "", "one JSON object"},
		{"array instead of object", `[{"timestamp":"2026-11-28T11:00:00Z"}]`, "one JSON object"},
		{"truncated JSON", `{"timestamp":"2026-11-28T11:00:00Z"`, "not valid JSON"},
		{"data after the object", `{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1"} {}`, "not valid JSON"},
		{"bad JSON after the fields", `{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1","disks":[1,]}`, "not valid JSON"},
		{"bad JSON and a wrong type", `{"timestamp":7,"disks":[1,]}`, "not valid JSON"},
		{"timestamp missing", `{"collector_version":"1.0.0"}`, "timestamp is required"},
		{"timestamp as a number", `{"timestamp":1764331200000,"collector_version":"1.0.0"}`, "must be strings"},
		{"timestamp not RFC 3339", `{"timestamp":"28/11/2026 11:00","collector_version":"1.0.0"}`, "RFC 3339"},
		{"timestamp in the future", `{"timestamp":"2026-11-28T13:00:00Z","collector_version":"1.0.0"}`, "in the future"},
		{"timestamp over a day old", `{"timestamp":"2026-11-27T11:59:59Z","collector_version":"1.0.0"}`, "more than 24 hours old"},
		{"timestamp weeks old", `{"timestamp":"2026-10-01T12:00:00Z","collector_version":"1.0.0"}`, "more than 24 hours old"},
		{"collector_version missing", `{"timestamp":"2026-11-28T11:00:00Z"}`, "collector_version is required"},
		{"collector_version too long", `{"timestamp":"2026-11-28T11:00:00Z","collector_version":"` + strings.Repeat("9", 65) + `"}`, "collector_version is required"},
		{"server_id not a string", `{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1","server_id":7}`, "must be strings"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, p := parse([]byte(tc.body), now)
			if p == nil || p.Status != http.StatusBadRequest || p.Code != "invalid_snapshot" || !strings.Contains(p.Detail, tc.detail) {
				t.Fatalf("got %+v, want 400 invalid_snapshot mentioning %q", p, tc.detail)
			}
		})
	}
	ok := `{"timestamp":"2026-11-28T11:59:00.123Z","collector_version":"0.9.4","system":{"hostname":"db1"},"disks":[]}`
	if s, p := parse([]byte(ok), now); p != nil || *s.CollectorVersion != "0.9.4" {
		t.Fatalf("good snapshot refused: %+v", p)
	}
	// A collector's clock may be off by hours: up to a day behind (and 5
	// minutes ahead) is taken.
	for _, ts := range []string{"2026-11-27T12:00:00Z", "2026-11-28T12:05:00Z"} {
		if _, p := parse([]byte(`{"timestamp":"`+ts+`","collector_version":"1"}`), now); p != nil {
			t.Errorf("timestamp %s refused: %+v", ts, p)
		}
	}
	// The body is stored as sent, so only what JSON calls white space may
	// surround it: Go's wider idea of space (\v, \f, U+00A0...) is refused
	// as encoding/json refuses it.
	for _, pad := range []string{"\v", "\f", "\u0085", "\u00a0", "\u2028", "\u3000"} {
		body := pad + ok + pad
		if _, p := parse([]byte(body), now); p == nil || p.Status != http.StatusBadRequest {
			t.Errorf("%q around a snapshot: accepted (json.Valid %v)", pad, json.Valid([]byte(body)))
		}
	}
	for _, pad := range []string{" ", "\t", "\r\n"} {
		if _, p := parse([]byte(pad+ok+pad), now); p != nil {
			t.Errorf("JSON white space %q around a snapshot: %+v", pad, p)
		}
	}
}

func TestRetentionByPlan(t *testing.T) {
	if RetentionDays("pro") != 90 || RetentionDays("free") != 7 || RetentionDays("") != 7 {
		t.Fatal("retention does not follow the plan")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1.0.0"}`)
	f.Add(`{"timestamp":null}`)
	f.Add(`[]`)
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body string) {
		s, p := parse([]byte(body), now)
		if (s == nil) == (p == nil) {
			t.Fatalf("parse(%q) returned both or neither", body)
		}
		if p != nil {
			if p.Status != 400 || p.Code != "invalid_snapshot" || p.Detail == "" {
				t.Fatalf("parse(%q) refused with %+v, not 400 invalid_snapshot", body, p)
			}
			return
		}
		// What is accepted is stored and read back: a snapshot the store
		// can hold and the sweep can date.
		if s.Timestamp == nil || s.CollectorVersion == nil {
			t.Fatalf("accepted %q without required fields", body)
		}
		ts, err := time.Parse(time.RFC3339Nano, *s.Timestamp)
		if err != nil || ts.After(now.Add(clockSkew)) {
			t.Fatalf("accepted %q with timestamp %q (%v)", body, *s.Timestamp, err)
		}
		if v := *s.CollectorVersion; v == "" || len(v) > 64 {
			t.Fatalf("accepted %q with collector_version %q", body, v)
		}
		var doc map[string]json.RawMessage
		if json.Unmarshal([]byte(body), &doc) != nil {
			t.Fatalf("accepted %q, which encoding/json does not read as an object", body)
		}
	})
}

// parse takes exactly the snapshots encoding/json reads as one object
// whose timestamp is an RFC 3339 time not past the clock skew and whose
// collector_version is a string of 1 to 64 bytes: its own fast reader
// agrees with the standard library's, both ways.
func FuzzParseAgreesWithEncodingJSON(f *testing.F) {
	f.Add(`{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1.0.0"}`)
	f.Add(`{"TIMESTAMP":"2026-11-28T11:00:00Z","collector_version":"1","timestamp":null}`)
	f.Add(`{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1","server_id":7}`)
	f.Add(` {"timestamp":"2026-11-28T11:00:00.5+01:00","collector_version":"\u00e9","x":[1,{"y":"z"}]} `)
	f.Add(`{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1"} {}`)
	f.Add(`{"collector_version":"1","timestamp":"2026-11-28T12:00:30Z","server_id":null}`)
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body string) {
		_, p := parse([]byte(body), now)
		var ref struct {
			Timestamp        *string `json:"timestamp"`
			CollectorVersion *string `json:"collector_version"`
			ServerID         *string `json:"server_id"`
		}
		trimmed := strings.Trim(body, " \t\r\n")
		want := strings.HasPrefix(trimmed, "{") && json.Unmarshal([]byte(trimmed), &ref) == nil &&
			ref.Timestamp != nil && ref.CollectorVersion != nil && *ref.CollectorVersion != "" && len(*ref.CollectorVersion) <= 64
		if want {
			ts, err := time.Parse(time.RFC3339Nano, *ref.Timestamp)
			want = err == nil && !ts.After(now.Add(clockSkew))
		}
		if (p == nil) != want {
			t.Fatalf("%q: accepted %v, encoding/json's reading says %v (%+v)", body, p == nil, want, p)
		}
	})
}

// BenchmarkParse is the per-snapshot JSON work of ingest on an
// agent-shaped ~4 KB snapshot.
func BenchmarkParse(b *testing.B) {
	now := time.Now()
	body := []byte(crucibleSnapshot(now.Add(-time.Second), ""))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, p := parse(body, now); p != nil {
			b.Fatal(p)
		}
	}
}

// Past the in-flight byte bound a snapshot is refused at once, before its
// body is read, with 503 busy and Retry-After; the bytes of every answer,
// refusals included, are given back.
func TestInFlightBytesAreBounded(t *testing.T) {
	now := time.Now()
	body := crucibleSnapshot(now.Add(-time.Minute), "")
	h := &handler{log: zap.NewNop(), now: func() time.Time { return now }, maxInFlight: int64(len(body)) + 100}
	send := func(body string, declared int64) (*httptest.ResponseRecorder, int) {
		rc := &readCounter{r: strings.NewReader(body)}
		r := httptest.NewRequest("POST", "/api/v1/ingest", rc)
		r.ContentLength = declared
		r.Header.Set(identity.HeaderKind, identity.KindCollector)
		r.Header.Set(identity.HeaderCustomer, "c")
		r.Header.Set(identity.HeaderServer, "s")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w, rc.n
	}
	// Another request holds 200 bytes: this one no longer fits.
	h.inFlight.Store(200)
	w, read := send(body, int64(len(body)))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), `"busy"`) {
		t.Fatalf("over the bound: %d %q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if read != 0 {
		t.Errorf("%d body bytes read before refusing, want 0", read)
	}
	if got := h.inFlight.Load(); got != 200 {
		t.Errorf("in flight %d after the refusal, want the other request's 200", got)
	}
	// An undeclared length reserves MaxBody, more than this bound.
	h.inFlight.Store(0)
	if w, _ := send(`{}`, -1); w.Code != http.StatusServiceUnavailable {
		t.Errorf("undeclared length: %d, want 503", w.Code)
	}
	// A declared length that fits is read; a bad snapshot gives its bytes
	// back too.
	if w, read := send(`{"timestamp":1}`, 15); w.Code != http.StatusBadRequest || read != 15 {
		t.Errorf("bad snapshot: %d %s (%d bytes read), want 400 after reading 15", w.Code, w.Body, read)
	}
	if got := h.inFlight.Load(); got != 0 {
		t.Errorf("in flight %d after every answer, want 0", got)
	}
}

// One customer's snapshots may hold only a share of the in-flight bound:
// the rate limits count requests, not bytes, and an account sending large
// snapshots must not leave every other customer's collectors busy.
func TestOneCustomerHoldsAShareOfTheInFlightBytes(t *testing.T) {
	now := time.Now()
	body := crucibleSnapshot(now.Add(-time.Minute), "")
	h := &handler{log: zap.NewNop(), now: func() time.Time { return now }, maxInFlight: 16 * MaxBody}
	send := func(customer string) int {
		r := httptest.NewRequest("POST", "/api/v1/ingest", strings.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Set(identity.HeaderKind, identity.KindCollector)
		r.Header.Set(identity.HeaderCustomer, customer)
		r.Header.Set(identity.HeaderServer, "s")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	// Customer "big" holds its whole share with snapshots still being
	// stored.
	if !h.reserve("big", h.customerBound()) {
		t.Fatal("a share that fits was refused")
	}
	if code := send("big"); code != http.StatusServiceUnavailable {
		t.Fatalf("a customer past its share: %d, want 503 busy", code)
	}
	// The bound has room, and another customer's snapshot fits it.
	if !h.fits("small", int64(len(body))) {
		t.Fatal("another customer's snapshot does not fit while the bound has room")
	}
	h.release("big", h.customerBound())
	if h.inFlight.Load() != 0 || len(h.held) != 0 {
		t.Fatalf("after the release: %d bytes in flight, holders %v", h.inFlight.Load(), h.held)
	}
	if !h.fits("big", int64(len(body))) {
		t.Fatal("a customer whose bytes were given back is still refused")
	}
}

// A snapshot is charged to the in-flight bound as its bytes arrive: one
// that declared its length and has sent nothing yet holds none of it, and
// one whose bytes pass the bound while they are read is refused with 503
// busy and gives back what it held.
func TestInFlightBytesAreChargedAsTheyArrive(t *testing.T) {
	now := time.Now()
	body := crucibleSnapshot(now.Add(-time.Minute), "")
	h := &handler{log: zap.NewNop(), now: func() time.Time { return now }, maxInFlight: int64(len(body)) + 100}
	request := func(r io.Reader, declared int64) *http.Request {
		req := httptest.NewRequest("POST", "/api/v1/ingest", r)
		req.ContentLength = declared
		req.Header.Set(identity.HeaderKind, identity.KindCollector)
		req.Header.Set(identity.HeaderCustomer, "c")
		req.Header.Set(identity.HeaderServer, "s")
		return req
	}
	idle, feed := io.Pipe()
	watched, reading := testenv.Reading(idle)
	answered := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, request(watched, int64(len(body))))
		answered <- w
	}()
	select {
	case <-reading:
	case w := <-answered:
		t.Fatalf("an upload that sent nothing yet was answered: %d %s", w.Code, w.Body)
	}
	if got := h.inFlight.Load(); got != 0 {
		t.Errorf("%d bytes in flight for an upload that sent nothing, want 0", got)
	}
	// Bytes of another request take the bound meanwhile: the upload's,
	// once they come, do not fit.
	h.inFlight.Add(200)
	_, _ = feed.Write([]byte(body))
	feed.Close()
	if w := <-answered; w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), `"busy"`) {
		t.Fatalf("a body past the bound: %d %q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if got := h.inFlight.Load(); got != 200 {
		t.Errorf("in flight %d after the refusal, want the other request's 200", got)
	}
}

type readCounter struct {
	r io.Reader
	n int
}

func (c *readCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Ingest refuses snapshots older than maxAge and checks no plan itself: a
// plan that kept snapshots for less would have rows stored already past
// their retention, for the sweep alone to catch.
func TestEveryPlanKeepsWhatIngestTakes(t *testing.T) {
	for p := range plan.SnapshotDays() {
		if keeps := time.Duration(RetentionDays(p)) * 24 * time.Hour; keeps <= maxAge+clockSkew {
			t.Errorf("plan %s keeps snapshots %v, no longer than ingest takes them (%v)", p, keeps, maxAge)
		}
	}
	if keeps := time.Duration(RetentionDays("an unknown plan")) * 24 * time.Hour; keeps <= maxAge+clockSkew {
		t.Errorf("an unknown plan keeps snapshots %v", keeps)
	}
}
