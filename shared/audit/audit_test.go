package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/session"
)

func TestCanonicalIsStableAcrossEncodings(t *testing.T) {
	cases := []struct{ a, b string }{
		{`{"b":1,"a":[1.0,2.50,"x"]}`, `{ "a": [1, 2.5, "x"], "b": 1.000 }`},
		{`{"n":1e2}`, `{"n":100}`},
		{`{"s":"caf\u00e9","t":"<&>"}`, `{"t":"<&>","s":"café"}`},
	}
	for _, tc := range cases {
		ca, err1 := CanonicalText(tc.a)
		cb, err2 := CanonicalText(tc.b)
		if err1 != nil || err2 != nil || ca != cb {
			t.Errorf("%s -> %s, %s -> %s (%v %v)", tc.a, ca, tc.b, cb, err1, err2)
		}
	}
	if _, err := CanonicalText(`{"n":1e999999}`); err == nil {
		t.Error("a huge exponent was accepted")
	}
	if c, _ := Canonical(nil); c != "{}" {
		t.Errorf("nil metadata -> %q", c)
	}
}

func TestCanonicalRedactsSecrets(t *testing.T) {
	key := "gmk_acct_live_003AuLtjc7TJLctqJ2Unu3mfAGcxg9lrkrCWgKbidLF_zfKj"
	jwt := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"
	c, err := Canonical(map[string]any{
		"password": "hunter2hunter2", "new_key": key, "nested": map[string]any{"note": "token is " + jwt, "Authorization": "Bearer x"},
		"scope": "admin", "list": []any{key, "ok"}, "api_key": "anything",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"hunter2", key, jwt, "Bearer x", "anything"} {
		if strings.Contains(c, secret) {
			t.Errorf("canonical metadata keeps %q: %s", secret, c)
		}
	}
	if !strings.Contains(c, `"scope":"admin"`) || !strings.Contains(c, `"ok"`) {
		t.Errorf("harmless members lost: %s", c)
	}
}

// hashNotCovered lists the Row fields Hash leaves out on purpose, each with
// its reason. Every other field must change the hash when it changes, so a
// field added to Row is either hashed or listed here.
var hashNotCovered = map[string]string{
	"CustomerID": "deleting a customer nulls it; the customer is hashed through CustomerDigest",
	"RowHash":    "the hash itself",
}

func TestHashCoversEveryStoredFieldButCustomer(t *testing.T) {
	base := Row{
		CustomerID: "c", KeyID: "k", UserID: "u", OccurredAt: time.Date(2026, 11, 28, 12, 0, 0, 123456000, time.UTC),
		SourceIP: "203.0.113.9", UserAgent: "curl/8", RequestID: "r", Method: "POST", Path: "/api/v1/keys",
		ResourceType: "api_key", ResourceID: "id", Action: "create", Result: "success", StatusCode: 201,
		Metadata: `{"scope":"admin"}`, WriterID: "w", WriterSeq: 7, PrevHash: []byte{1, 2, 3}, RowHash: []byte{4, 5, 6},
	}
	h := Hash(&base)
	anon := base
	anon.CustomerID = ""
	if !bytes.Equal(Hash(&anon), h) {
		t.Error("nulling customer_id changes the hash")
	}
	withDigest := base
	withDigest.CustomerDigest = CustomerDigest("c")
	rt := reflect.TypeFor[Row]()
	for name := range hashNotCovered {
		if _, ok := rt.FieldByName(name); !ok {
			t.Errorf("hashNotCovered names %s, which Row does not have", name)
		}
	}
	// Each field edited alone, in both layouts: a row without a customer
	// digest (v1, where setting one is the edit) and a row with one (v2).
	for _, layout := range []struct {
		name string
		row  Row
	}{{"v1", base}, {"v2", withDigest}} {
		want := Hash(&layout.row)
		for i := range rt.NumField() {
			f := rt.Field(i)
			r := layout.row
			if !f.IsExported() || !editField(reflect.ValueOf(&r).Elem().Field(i)) {
				t.Errorf("%s: Row.%s (%s) has no edit here: teach editField its type", layout.name, f.Name, f.Type)
				continue
			}
			changed := !bytes.Equal(Hash(&r), want)
			why, excluded := hashNotCovered[f.Name]
			switch {
			case excluded && changed:
				t.Errorf("%s: editing %s changes the hash, which must leave it out (%s)", layout.name, f.Name, why)
			case !excluded && !changed:
				t.Errorf("%s: editing %s leaves the hash unchanged", layout.name, f.Name)
			}
		}
	}
	// The customer is in the hash through its digest, which nulling
	// customer_id leaves in place.
	hd := Hash(&withDigest)
	other := withDigest
	other.CustomerDigest = CustomerDigest("d")
	if bytes.Equal(Hash(&other), hd) {
		t.Error("another customer's digest leaves the hash unchanged")
	}
}

// editField changes v to another value that a stored row could hold and
// reports whether it knows v's type. Slices get a new backing array, so
// the row the edit was copied from stays as it was.
func editField(v reflect.Value) bool {
	switch x := v.Interface().(type) {
	case time.Time:
		v.Set(reflect.ValueOf(x.Add(time.Microsecond))) // what PostgreSQL keeps
	case string:
		v.SetString(x + "x")
	case int, int64:
		v.SetInt(v.Int() + 1)
	case []byte:
		v.SetBytes(append(bytes.Clone(x), 'x'))
	default:
		return false
	}
	return true
}

// TestHashKnownAnswers pins the byte layout of each version. The digests
// were computed outside Go (Python's hashlib) from this layout, in order:
//
//	v1: field("guardian-audit-v1")
//	v2: field("guardian-audit-v2"), field(CustomerDigest)
//	then field(WriterID), u64(WriterSeq), field(PrevHash), field(KeyID),
//	field(UserID), OccurredAt in UTC as "2006-01-02T15:04:05.000000Z"
//	(27 bytes, no length), field(SourceIP), field(UserAgent),
//	field(RequestID), field(Method), field(Path), field(ResourceType),
//	field(ResourceID), field(Action), field(Result), u64(StatusCode),
//	field(Metadata)
//
// where field(s) is u64(len(s)) then s, and u64 is 8 bytes big-endian;
// the hash is SHA-256 of the whole. CustomerID and RowHash are not in it.
// Stored rows keep these hashes forever: a change here breaks every chain.
func TestHashKnownAnswers(t *testing.T) {
	cases := []struct {
		name string
		row  Row
		want string
	}{
		{
			name: "v1: a row written before customer_digest",
			row: Row{
				CustomerID: "c-1", KeyID: "0b6f3d2e-4d7c-4f4e-9b1a-3c5d7e9f1a2b",
				// 22:15:30.123456 UTC, the day before in UTC.
				OccurredAt: time.Date(2025, 3, 2, 0, 15, 30, 123456000, time.FixedZone("", 2*60*60)),
				SourceIP:   "203.0.113.9", UserAgent: "curl/8.5.0", RequestID: "01JNR3Q9Z8", Method: "POST",
				Path: "/api/v1/keys", ResourceType: "api_key", ResourceID: "k-7", Action: "create", Result: "success",
				StatusCode: 201, Metadata: `{"scope":"admin"}`, WriterID: "edge-1:4242", WriterSeq: 41,
				PrevHash: seq(0x20, 32), RowHash: []byte{0xff},
			},
			want: "3e57fd7211beb390e22369a17098cb9b927e3a5518a7312a76b1cbfffff9e30e",
		},
		{
			name: "v2: a chain's first row, its customer nulled, with a salted digest",
			row: Row{
				UserID: "u-9f", OccurredAt: time.Date(2026, 11, 28, 12, 0, 0, 1000, time.UTC),
				UserAgent: "Mozilla/5.0 (X11) é", RequestID: "r-2", Method: "DELETE", Path: "/api/v1/servers/s-1",
				ResourceType: "server", ResourceID: "s-1", Action: "delete", Result: "denied", StatusCode: 403,
				Metadata: "{}", CustomerDigest: append([]byte{0x03}, seq(0xa0, 32)...), WriterID: "edge-2:77", WriterSeq: 1,
			},
			want: "da94215cbe508e457e4ee2952010df5fd9a1e7e4b9e461aa77f8752876553c2f",
		},
	}
	for _, tc := range cases {
		if got := hex.EncodeToString(Hash(&tc.row)); got != tc.want {
			t.Errorf("%s: hash %s, want %s", tc.name, got, tc.want)
		}
	}
}

// seq returns n bytes counting up from first.
func seq(first byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = first + byte(i)
	}
	return b
}

func TestAnnotationRoundTrip(t *testing.T) {
	a := Annotation{ResourceType: "api_key", ResourceID: "x", Action: "rotate", Metadata: map[string]any{"scope": "write"}}
	var b Annotation
	if err := json.Unmarshal([]byte(a.Encode()), &b); err != nil || b.Action != "rotate" || b.Metadata["scope"] != "write" {
		t.Fatalf("%+v %v", b, err)
	}
}

func TestResultAndActionDefaults(t *testing.T) {
	for status, want := range map[int]string{200: "success", 204: "success", 401: "denied", 403: "denied", 429: "denied", 400: "error", 404: "error", 502: "error"} {
		if got := ResultFor(status); got != want {
			t.Errorf("ResultFor(%d) = %s", status, got)
		}
	}
	for m, want := range map[string]string{"GET": "read", "POST": "create", "PATCH": "update", "PUT": "update", "DELETE": "delete", "HEAD": "read"} {
		if got := ActionFor(m); got != want {
			t.Errorf("ActionFor(%s) = %s", m, got)
		}
	}
	if NormalizeIP("::ffff:203.0.113.9") != "203.0.113.9" || NormalizeIP("nope") != "" || NormalizeIP("2001:DB8::1") != "2001:db8::1" {
		t.Error("NormalizeIP")
	}
}

// The fast paths decide as the regexps do, for any name or value.
func FuzzSecretMatchers(f *testing.F) {
	for _, s := range []string{"password", "PassWord", "x_api_key", "apiKey", "key", "KEY", "keys", "monkey", "paſsword",
		"\u212aey", "scope", "collector_version", "gmk_acct_live_003AuLtjc7TJLctqJ2Unu3mf", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := isSecretKey(s), secretKey.MatchString(s); got != want {
			t.Fatalf("isSecretKey(%q) = %v, the regexp says %v", s, got, want)
		}
		if got, want := isSecretValue(s), secretValue.MatchString(s); got != want {
			t.Fatalf("isSecretValue(%q) = %v, the regexp says %v", s, got, want)
		}
	})
}

// Integral float64 values take a fast path; it writes what the exact
// path writes.
func TestCanonicalFloatFastPath(t *testing.T) {
	for _, v := range []float64{0, math.Copysign(0, -1), 1, -1, 4096, 1<<53 - 1, -(1<<53 - 1), 1 << 53, 1e300, 0.5, -2.25, 1e-7} {
		got, err := Canonical(v)
		r := new(big.Rat)
		r.SetFloat64(v)
		want := ratText(r)
		if len(want) > maxNumberText {
			if err == nil {
				t.Errorf("%v: %s, want an error (too long)", v, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("Canonical(%v) = %q %v, want %q", v, got, err, want)
		}
	}
}

func FuzzCanonicalText(f *testing.F) {
	f.Add(`{"a":1}`)
	f.Add(`{"password":"x","n":[1.5,{"b":null}]}`)
	f.Add(`{"z":[1,2,3,{"b":[true,false,null,"x\u0000"]}],"c":-0.5e-3,"a":{"":1E2}}`)
	f.Fuzz(func(t *testing.T, text string) {
		c, err := CanonicalText(text)
		if err != nil {
			return
		}
		// Canonical form is a fixed point.
		again, err := CanonicalText(c)
		if err != nil && !strings.HasPrefix(strings.TrimSpace(c), "\"") {
			t.Fatalf("canonical %q does not parse: %v", c, err)
		}
		if err == nil && again != c {
			t.Fatalf("not a fixed point: %q -> %q", c, again)
		}
		// And it holds what the text held: the same members and values,
		// numbers equal as numbers, NUL as U+FFFD (null at the top: {}).
		in, out := decodeJSON(t, text), decodeJSON(t, c)
		if in == nil {
			if c != "{}" {
				t.Fatalf("null became %q", c)
			}
			return
		}
		if collides(in) {
			return // two names that differ only by NUL and U+FFFD: one is kept
		}
		if !sameJSON(in, out) {
			t.Fatalf("%q canonicalised to %q, which holds something else", text, c)
		}
	})
}

// decodeJSON is the first JSON value of text, numbers kept as text.
func decodeJSON(t *testing.T, text string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%q: %v", text, err)
	}
	return v
}

// collides reports whether an object in v has two names that differ only
// by NUL and U+FFFD.
func collides(v any) bool {
	switch x := v.(type) {
	case map[string]any:
		seen := map[string]bool{}
		for k, e := range x {
			if seen[noNUL(k)] || collides(e) {
				return true
			}
			seen[noNUL(k)] = true
		}
	case []any:
		for _, e := range x {
			if collides(e) {
				return true
			}
		}
	}
	return false
}

// sameJSON compares decoded JSON as the canonical form must keep it.
func sameJSON(a, b any) bool {
	switch x := a.(type) {
	case nil, bool:
		return a == b
	case string:
		y, ok := b.(string)
		return ok && noNUL(x) == y
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		rx, okx := new(big.Rat).SetString(string(x))
		ry, oky := new(big.Rat).SetString(string(y))
		return okx && oky && rx.Cmp(ry) == 0
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[noNUL(k)]
			if !ok || !sameJSON(v, w) {
				return false
			}
		}
		return true
	}
	return false
}

// jsonb refuses \u0000, and metadata carries what clients sent (a
// collector's version string, say): NUL is stored as U+FFFD, in values and
// in member names, and the result is canonical already.
func TestCanonicalHasNoNUL(t *testing.T) {
	c, err := CanonicalText(`{"v":"0.9\u0000x","k\u0000":["\u0000"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(c, `\u0000`) || strings.ContainsRune(c, 0) || !strings.Contains(c, `"0.9`+"\uFFFD"+`x"`) || !strings.Contains(c, `"k`+"\uFFFD"+`"`) {
		t.Fatalf("canonical form %s", c)
	}
	if again, err := CanonicalText(c); err != nil || again != c {
		t.Fatalf("not stable: %s -> %s %v", c, again, err)
	}
}

// Names are in the order of the names written (NUL as U+FFFD), so the
// text is canonical read back; two names written alike are one member,
// the value of the greater name as given, as jsonb keeps one of two equal
// names and audit-verify must hash what it keeps.
func TestCanonicalNamesWithNUL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"a\u0000b":1,"a\u0001":2}`, "{\"a\\u0001\":2,\"a\uFFFDb\":1}"},
		{`{"\u0000":1,"\ufffd":2}`, "{\"\uFFFD\":2}"},
		{`{"\ufffd":2,"\u0000":1}`, "{\"\uFFFD\":2}"},
	} {
		c, err := CanonicalText(tc.in)
		if err != nil || c != tc.want {
			t.Errorf("%s: %s %v, want %s", tc.in, c, err, tc.want)
			continue
		}
		if again, err := CanonicalText(c); err != nil || again != c {
			t.Errorf("%s: not a fixed point: %s", c, again)
		}
	}
	if c, err := Canonical(map[string]any{"\x00": 1.0, "\uFFFD": 2.0}); err != nil || c != "{\"\uFFFD\":2}" {
		t.Errorf("a map: %s %v", c, err)
	}
	// Bytes that are not UTF-8, which jsonb keeps as U+FFFD, are written
	// so: the canonical text reads back to itself, names and values.
	for _, m := range []map[string]any{
		{"a\xff": 1.0, "a\uFFFD": 2.0},
		{"\x80": 1.0, "\u00e9": 2.0},
		{"v": "x\xffy\xfe"},
	} {
		c, err := Canonical(m)
		if err != nil {
			t.Fatal(err)
		}
		if again, err := CanonicalText(c); err != nil || again != c {
			t.Errorf("%v: %s reads back as %s (%v)", m, c, again, err)
		}
	}
}

// BenchmarkCanonicalIngestMetadata is the metadata every snapshot's audit
// row carries (functions/ingest), canonicalised once per request.
func BenchmarkCanonicalIngestMetadata(b *testing.B) {
	m := map[string]any{"collector_version": "1.4.2", "bytes": float64(3712)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Canonical(m); err != nil {
			b.Fatal(err)
		}
	}
}

// A salted digest depends on the customer's salt, so the id alone does
// not give it; the three forms differ in length, which verify reads.
func TestSaltedCustomerDigest(t *testing.T) {
	id := "6f1c2a7e-9b1d-4f3a-8c2e-1d2f3a4b5c6d"
	a, b := SaltedCustomerDigest([]byte("salt-a"), id), SaltedCustomerDigest([]byte("salt-b"), id)
	if len(a) != 33 || a[0] != saltedDigest || bytes.Equal(a, b) {
		t.Fatalf("salted digests %x %x", a, b)
	}
	if !bytes.Equal(a, SaltedCustomerDigest([]byte("salt-a"), id)) {
		t.Fatal("not deterministic")
	}
	if bytes.Equal(a[1:], CustomerDigest(id)) || len(CustomerDigest(id)) != 32 || len(UnknownCustomer) != 1 {
		t.Fatal("digest forms not told apart by length")
	}
}

func TestMovedRows(t *testing.T) {
	const a, b, gone = "a0000000-0000-4000-8000-000000000000", "b0000000-0000-4000-8000-000000000000", "c0000000-0000-4000-8000-000000000000"
	// due: a customer whose deletion is due (account-purge anonymises its
	// rows in batches before it deletes it).
	const due = "d0000000-0000-4000-8000-000000000000"
	saltA, saltB, saltGone, saltDue := []byte("sa"), []byte("sb"), []byte("sc"), []byte("sd")
	live := Customers{salted: map[string][]byte{}, live: map[string]bool{}, due: map[string]bool{}}
	for id, salt := range map[string][]byte{a: saltA, b: saltB, due: saltDue} {
		d := SaltedCustomerDigest(salt, id)
		live.salted[id], live.live[string(d)], live.live[string(CustomerDigest(id))] = d, true, true
	}
	live.due[string(SaltedCustomerDigest(saltDue, due))], live.due[string(CustomerDigest(due))] = true, true
	for _, tc := range []struct {
		name     string
		customer string
		digest   []byte
		moved    bool
	}{
		{"its customer", a, SaltedCustomerDigest(saltA, a), false},
		{"moved to another customer", b, SaltedCustomerDigest(saltA, a), true},
		{"nulled while its customer exists", "", SaltedCustomerDigest(saltA, a), true},
		{"nulled, customer deleted", "", SaltedCustomerDigest(saltGone, gone), false},
		{"of a customer deleted since, not yet nulled", gone, SaltedCustomerDigest(saltGone, gone), false},
		{"moved to an id of no customer", gone, SaltedCustomerDigest(saltA, a), true},
		{"unsalted, moved to an id of no customer", gone, CustomerDigest(a), true},
		{"given to a customer", a, CustomerDigest(""), true},
		{"no customer", "", CustomerDigest(""), false},
		{"unsalted, its customer", a, CustomerDigest(a), false},
		{"unsalted, moved", b, CustomerDigest(a), true},
		{"unsalted, nulled while its customer exists", "", CustomerDigest(a), true},
		{"unknown customer", a, UnknownCustomer, false},
		{"before digests", b, nil, false},
		{"nulled, its customer's deletion due", "", SaltedCustomerDigest(saltDue, due), false},
		{"unsalted, nulled, its customer's deletion due", "", CustomerDigest(due), false},
		{"a due customer's, moved to an id of no customer", gone, SaltedCustomerDigest(saltDue, due), true},
		{"a due customer's, moved to another customer", a, SaltedCustomerDigest(saltDue, due), true},
		{"a due customer's, its own", due, SaltedCustomerDigest(saltDue, due), false},
	} {
		if got := live.moved(&Row{CustomerID: tc.customer, CustomerDigest: tc.digest}); got != tc.moved {
			t.Errorf("%s: moved = %v, want %v", tc.name, got, tc.moved)
		}
	}
}

func TestRedactPath(t *testing.T) {
	key := "gmk_acct_live_" + strings.Repeat("a1B2", 11)[:43] + "_x1y2"
	for in, want := range map[string]string{
		"/api/v1/keys/0c0c0c0c-0000-4000-8000-000000000000":       "/api/v1/keys/0c0c0c0c-0000-4000-8000-000000000000",
		"/api/v1/keys/" + key:                                     "/api/v1/keys/[redacted]",
		"/a/" + key + "/b/" + key:                                 "/a/[redacted]/b/[redacted]",
		"/gmk_docs":                                               "/gmk_docs",
		"/api/v1/servers/" + strings.ToLower(key):                 "/api/v1/servers/[redacted]",
		"/api/v1/servers/" + strings.ToUpper(key):                 "/api/v1/servers/[redacted]",
		"/x/gmk_x_live_" + strings.Repeat("a", 20) + key:          "/x/[redacted]",
		"/x/eyJaaaaaaaa.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig": "/x/[redacted]",
		"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig":                "[redacted]",                               // the signature too: the claims are guessable
		"EYJHBGCIOIJIUZI1NIJ9.EYJZDWIIOIJ4IN0.SIG":                "EYJHBGCIOIJIUZI1NIJ9.EYJZDWIIOIJ4IN0.SIG", // no longer a token
	} {
		if got := RedactPath(in); got != want {
			t.Errorf("RedactPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHasKeyPrefix(t *testing.T) {
	for in, want := range map[string]bool{
		"gmk_acct_live_x": true, "/GMK_": true, "ua Gmk_": true, "a_gmk_": true, "gm_k_": false,
		"": false, "_": false, "gmk": false, "mk_": false, "__gmk": false, "gmk-_": false, "é_gmk_": true,
	} {
		if got := hasKeyPrefix(in); got != want {
			t.Errorf("hasKeyPrefix(%q) = %v, want %v", in, got, want)
		}
	}
}

// A key (account or collector, in any letter case) or a session token
// inside any text a row keeps comes out of RedactText gone, whatever
// surrounds it, and redacting again changes nothing.
func FuzzRedactText(f *testing.F) {
	f.Add([]byte("0123456789abcdef0123456789abcdef"), "/api/v1/keys/", "/rotate", uint8(0), false)
	f.Add([]byte("ffffffffffffffffffffffffffffffff"), "curl/8 ", "", uint8(1), true)
	f.Add([]byte("00000000000000000000000000000000"), "x", "_live_", uint8(2), false)
	f.Add([]byte("11111111111111111111111111111111"), "gmk_x_live_aaaaaaaaaaaaaaaaaaaa", "", uint8(0), false)
	f.Add([]byte("22222222222222222222222222222222"), "/x/eyJaaaaaaaa.", "", uint8(0), true)
	f.Fuzz(func(t *testing.T, raw []byte, before, after string, casing uint8, collector bool) {
		if len(raw) != 32 {
			return
		}
		kind := apikey.Account
		if collector {
			kind = apikey.Collector
		}
		key, err := apikey.FromBytes(kind, [32]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		token, err := session.Issue(bytes.Repeat([]byte("s"), 32), "0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d11", "0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d12",
			"0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d13", time.Unix(1796000000, 0), time.Unix(1796600000, 0))
		if err != nil {
			t.Fatal(err)
		}
		switch casing % 3 {
		case 1:
			key = strings.ToUpper(key)
		case 2:
			key = strings.ToLower(key)
		}
		for _, secret := range []string{key, token} {
			out := RedactText(before + secret + after)
			// The part that makes it a secret: the key's random body, the
			// token's signed claims.
			body := secret[len(secret)-20:]
			if strings.Contains(strings.ToLower(out), strings.ToLower(body)) {
				t.Fatalf("RedactText(%q) = %q keeps the secret", before+secret+after, out)
			}
			if again := RedactText(out); again != out {
				t.Fatalf("redacting %q again gave %q", out, again)
			}
		}
	})
}

// RedactCut leaves no 8 characters in a row of a key's random part or a
// token's signature, wherever its cut falls: before, inside or after the
// secret.
func FuzzRedactCut(f *testing.F) {
	f.Add([]byte("0123456789abcdef0123456789abcdef"), "Mozilla/5.0 ", "", uint16(30), false, uint8(0), uint8(0))
	f.Add([]byte("ffffffffffffffffffffffffffffffff"), strings.Repeat("a", 500), " x", uint16(512), true, uint8(0), uint8(0))
	f.Add([]byte("22222222222222222222222222222222"), "/api/v1/keys/", "/rotate", uint16(40), false, uint8(0), uint8(0))
	f.Add([]byte("33333333333333333333333333333333"), "/api/v1/keys/", "", uint16(2048), false, uint8(20), uint8(1))
	f.Add([]byte("44444444444444444444444444444444"), "agent ", "", uint16(512), true, uint8(30), uint8(2))
	f.Fuzz(func(t *testing.T, raw []byte, before, after string, n uint16, token bool, split, junk uint8) {
		if len(raw) != 32 || n == 0 || n > 4096 {
			return
		}
		secret, err := apikey.FromBytes(apikey.Account, [32]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		body := secret[strings.Index(secret, "_live_")+len("_live_"):]
		if token {
			if secret, err = session.Issue(raw, "0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d11", "0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d12",
				"0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d13", time.Unix(1796000000, 0), time.Unix(1796600000, 0)); err != nil {
				t.Fatal(err)
			}
			body = secret[strings.LastIndexByte(secret, '.')+1:]
		}
		// What a text column cannot keep, or keeps as U+FFFD, inside the
		// secret: taken out, the secret is whole again.
		if junk %= 4; junk > 0 {
			at := int(split) % (len(secret) + 1)
			secret = secret[:at] + [...]string{"", "\x00", "\xff", "\uFFFD"}[junk] + secret[at:]
		}
		out := RedactCut(before+secret+after, int(n))
		if len(out) > int(n) {
			t.Fatalf("RedactCut to %d gave %d bytes", n, len(out))
		}
		joined := strings.ReplaceAll(out, "\uFFFD", "")
		for i := 0; i+8 <= len(body); i++ {
			w := body[i : i+8]
			if strings.Contains(joined, w) && !strings.Contains(before+after, w) {
				t.Fatalf("RedactCut(%q, %d) = %q keeps %q of the secret", before+secret+after, n, out, w)
			}
		}
	})
}

// RedactCut leaves what it does not cut inside a key or token as
// RedactText would: words that merely hold gmk_ or eyJ stay.
func TestRedactCutKeepsWhatItDidNotSplit(t *testing.T) {
	for _, s := range []string{"/gmk_docs", "/api/v1/servers/heyJude", "/api/v1/keyJobs", "Mozilla/5.0 surveyJS",
		"/api/v1/servers/0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d11"} {
		if got := RedactCut(s, 2048); got != s {
			t.Errorf("RedactCut(%q) = %q", s, got)
		}
	}
	// Cut between words, nothing is split: the word before stays.
	if got := RedactCut("/x/gmk_docs/more", 11); got != "/x/gmk_docs" {
		t.Errorf("cut after a word: %q", got)
	}
	// Cut inside one, it goes from its start.
	if got := RedactCut("/x/gmk_acct_live_abcdef", 12); got != "/x[redacted]" { // the marker within 12: the path gives way
		t.Errorf("cut inside a key: %q", got)
	}
	if got := RedactCut("/api/v1/keys/gmk_acct_live_abcdefghijkl", 30); got != "/api/v1/keys/[redacted]" {
		t.Errorf("cut inside a key: %q", got)
	}
}

// BenchmarkRedactCutStrayBytes: a path and user agent holding bytes
// outside UTF-8, which any client may send, are read past for split
// secrets on every audited request.
func BenchmarkRedactCutStrayBytes(b *testing.B) {
	path := strings.Repeat("/api/v1/servers/\xff", 120)
	agent := "Mozilla/5.0 \x00" + strings.Repeat("x", 400)
	b.ReportAllocs()
	for b.Loop() {
		_ = RedactCut(path, 2048)
		_ = RedactCut(agent, 512)
	}
}
