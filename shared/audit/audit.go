// Package audit defines the audit log's rows as both sides see them: the
// edge writes them (caddymodules/audit), functions describe their resource
// in a response header, and the verify job recomputes their hash chain.
package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/glassmkr/guardian/shared/pgtext"
)

// Header is the response header in which a function tells the edge what
// the request did; the edge removes it before the client sees the answer.
// Its value is a JSON object: {"resource_type", "resource_id", "action",
// "metadata"}, every member optional.
const Header = "Guardian-Audit"

// Actions, as the security posture lists them.
var Actions = map[string]bool{
	"create": true, "list": true, "read": true, "update": true,
	"delete": true, "rotate": true, "auth_failed": true,
}

// Results.
const (
	ResultSuccess = "success"
	ResultDenied  = "denied"
	ResultError   = "error"
)

// Row is one api_audit_log row. CustomerID, KeyID and UserID are "" for
// NULL.
type Row struct {
	CustomerID   string
	KeyID        string
	UserID       string
	OccurredAt   time.Time // microseconds, as PostgreSQL keeps it
	SourceIP     string    // "" when unknown
	UserAgent    string
	RequestID    string
	Method       string
	Path         string
	ResourceType string
	ResourceID   string
	Action       string
	Result       string
	StatusCode   int
	// Metadata is canonical JSON (see Canonical); "{}" when empty.
	Metadata string

	// CustomerDigest names the customer the row was written for (see
	// SaltedCustomerDigest), set when the row is linked into a chain; nil
	// in rows written before it existed. It is hashed, and never changed,
	// so a customer_id moved to another customer shows.
	CustomerDigest []byte

	WriterID  string
	WriterSeq int64
	PrevHash  []byte
	RowHash   []byte
}

// A row's hash holds its customer as a digest: customer_id itself is
// outside the hash, because deleting a customer nulls it. A digest is one
// of three forms, told apart by length:
//
//   - SaltedCustomerDigest (33 bytes), for rows of a customer;
//   - CustomerDigest (32 bytes), unsalted: rows without a customer, and
//     rows of a customer written before customers had an audit salt;
//   - UnknownCustomer (1 byte): the edge could not read the customer's
//     salt (PostgreSQL away, or the customer deleted meanwhile), so verify
//     cannot check which customer the row belongs to.
//
// CustomerDigest is a SHA-256 of the customer id alone.
func CustomerDigest(customerID string) []byte {
	sum := sha256.Sum256([]byte("guardian-audit-customer\x00" + customerID))
	return sum[:]
}

// SaltedCustomerDigest is 0x03, then an HMAC-SHA-256 of the customer id
// keyed with the customer's own random salt (customers.audit_salt). The
// salt is deleted with the customer, so once a customer is gone, knowing
// its id no longer finds its rows: nulling customer_id then means what it
// says. An unsalted digest could be recomputed from the id by anyone.
func SaltedCustomerDigest(salt []byte, customerID string) []byte {
	m := hmac.New(sha256.New, salt)
	m.Write([]byte("guardian-audit-customer\x00" + customerID))
	return m.Sum([]byte{saltedDigest})
}

const saltedDigest = 0x03

// UnknownCustomer is the digest of a row whose customer's salt the edge
// could not read.
var UnknownCustomer = []byte{0}

// Annotation is what a function says about its request. CustomerID and
// UserID name the account a sign-in acted on or tried: they win over no
// identity and over a session the browser presented (which may be another
// account's), never over an API key's.
type Annotation struct {
	CustomerID   string         `json:"customer_id,omitempty"`
	UserID       string         `json:"user_id,omitempty"`
	ResourceType string         `json:"resource_type,omitempty"`
	ResourceID   string         `json:"resource_id,omitempty"`
	Action       string         `json:"action,omitempty"`
	Metadata     map[string]any `json:"metadata,omitempty"`
}

// Encode renders an annotation for the response header.
func (a Annotation) Encode() string {
	b, _ := json.Marshal(a)
	return string(b)
}

// ResultFor maps an HTTP status to a result. A redirect is a success: a
// route that answers 3xx has acted (a form sign-in's 303 to the
// dashboard, OpenID Connect's 303s) or, refusing, says so beside the
// status (the edge's redirect of a signed-out browser to /login is
// recorded denied; a form sign-in's refusal carries the action
// auth_failed). Functions never redirect to a cleaned path, which would
// be a success that did nothing: shared/fnserve answers 404 instead.
func ResultFor(status int) string {
	switch {
	case status < 400:
		return ResultSuccess
	case status == 401 || status == 403 || status == 429:
		return ResultDenied
	}
	return ResultError
}

// ActionFor is the default action of a method.
func ActionFor(method string) string {
	switch method {
	case "POST":
		return "create"
	case "PUT", "PATCH":
		return "update"
	case "DELETE":
		return "delete"
	}
	return "read"
}

// NormalizeIP renders an address in the one text that is stored and
// hashed, or "" if it is not one: Go's form, IPv4-mapped addresses as
// IPv4, without a zone (inet has none, and refuses one). PostgreSQL prints
// some addresses otherwise (an IPv4-compatible ::1.2.3.4, which Go writes
// ::102:304), so Verify renders what it reads back with this too.
func NormalizeIP(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return ""
	}
	return a.WithZone("").Unmap().String()
}

// secretKey matches metadata member names that may not hold values.
var secretKey = regexp.MustCompile(`(?i)(pass(word)?|secret|token|cookie|authorization|api_?key|^key$|pepper|credential)`)

// secretValue matches values that look like a Guardian key or a JWT, the
// JWT with its signature: header and claims are mostly guessable (the
// audit log itself records a session's id, user and start), so a
// signature left behind would let a reader of the log rebuild the token.
//
// Both run on over every character of either kind (letters, digits,
// '_', '-', '.'): text made to look like the start of one, just before a
// real key or token, would otherwise end the match inside the secret and
// leave the rest of it.
var secretValue = regexp.MustCompile(`(?i:gmk_[a-z]+_live_[0-9a-z_.-]{20,})|eyJ[0-9A-Za-z_-]{8,}\.[0-9A-Za-z_-]{8,}\.[0-9A-Za-z_.-]*`)

// Redacted replaces a value that must not be stored.
const Redacted = "[redacted]"

// Canonical renders metadata as canonical JSON: keys sorted, numbers in
// lowest terms, no insignificant space; members whose name suggests a
// secret, and values that look like a key or token, are redacted. The
// result is what gets stored and hashed, and re-canonicalising what
// PostgreSQL returns gives the same text.
func Canonical(metadata any) (string, error) { return canonical(redact(metadata, "")) }

func canonical(v any) (string, error) {
	var buf bytes.Buffer
	if err := canon(&buf, v); err != nil {
		return "", err
	}
	s := buf.String()
	if s == "null" {
		return "{}", nil
	}
	return s, nil
}

// CanonicalText re-canonicalises stored JSON text, as verify hashes it.
// It redacts nothing: what was stored was redacted already, and redacting
// again would hide an edit that wrote anything over a redacted value.
func CanonicalText(text string) (string, error) {
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("audit metadata: %w", err)
	}
	return canonical(v)
}

// noNUL replaces NUL characters, which jsonb refuses (as \u0000), with
// U+FFFD: metadata is partly what clients sent, and one refused row would
// fail the group commit of every row batched with it.
func noNUL(s string) string { return strings.ReplaceAll(s, "\x00", "\uFFFD") }

// stored is text as jsonb stores it and audit-verify reads it back: NUL
// (noNUL) and each byte that is not UTF-8 as U+FFFD. encoding/json writes
// such a byte as the escape \ufffd, and verify, reading U+FFFD, would
// write the character itself: the hashes would differ.
func stored(s string) string {
	s = noNUL(s)
	if !utf8.ValidString(s) {
		s = string([]rune(s)) // one U+FFFD per such byte, as jsonb has it
	}
	return s
}

// isSecretKey is secretKey.MatchString, without the regexp for ASCII
// names (nearly all): every audited call with metadata passes here.
func isSecretKey(k string) bool {
	lower := make([]byte, 0, 64)
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c >= 0x80 { // Unicode case folding (ſ, K): the regexp decides
			return secretKey.MatchString(k)
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower = append(lower, c)
	}
	l := string(lower)
	if l == "key" {
		return true
	}
	for _, w := range secretKeyWords {
		if strings.Contains(l, w) {
			return true
		}
	}
	return false
}

// secretKeyWords are secretKey's alternatives, but ^key$, in lower case.
var secretKeyWords = []string{"pass", "secret", "token", "cookie", "authorization", "apikey", "api_key", "pepper", "credential"}

// isSecretValue is secretValue.MatchString; the regexp runs only on
// strings holding one of its literal prefixes.
func isSecretValue(v string) bool {
	return (hasKeyPrefix(v) || strings.Contains(v, "eyJ")) && secretValue.MatchString(v)
}

// hasKeyPrefix reports whether v holds "gmk_" in any letter case: a key
// changed to upper or lower case (a function lower-cases the ids it
// reads from a path) is still most of a key, its case easily guessed.
func hasKeyPrefix(v string) bool {
	// Every row's path and user agent pass here: look for the rare '_'
	// (IndexByte's fast scan), then at the three letters before it.
	for i := 3; i < len(v); i++ {
		j := strings.IndexByte(v[i:], '_')
		if j < 0 {
			return false
		}
		i += j
		if v[i-3]|0x20 == 'g' && v[i-2]|0x20 == 'm' && v[i-1]|0x20 == 'k' {
			return true
		}
	}
	return false
}

// RedactPath replaces what looks like a key or token in a request path:
// a client revoking a key by the key itself, not its id, would put the
// secret in the audit log for good.
func RedactPath(path string) string { return RedactText(path) }

// RedactText replaces what looks like a key or token in any text a row
// keeps (path, resource id, user agent), in whatever letter case.
func RedactText(s string) string {
	if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
		s = redactSplit(s)
	}
	return redactClean(s)
}

// redactClean is RedactText for text without NUL or bytes outside UTF-8
// (pgtext.Clean's), where only U+FFFD can split a secret: every audited
// row's path and user agent pass here, so they are scanned once for it.
func redactClean(s string) string {
	if strings.Contains(s, "\uFFFD") {
		s = redactSplit(s)
	}
	if !isSecretValue(s) {
		return s
	}
	return secretValue.ReplaceAllString(s, Redacted)
}

// redactSplit redacts keys and tokens split by what a text column cannot
// keep (NUL, bytes outside UTF-8) or by what it keeps in their place
// (U+FFFD): removing those gives the secret back whole, so they are read
// past, and the whole span of a secret found so is replaced. Text without
// a secret's prefix once joined (nearly all: any client can
// send such characters) costs one copy and the prefix check, not the
// regexp.
func redactSplit(s string) string {
	// Runs between the characters read past, and where each begins in s
	// and in joined.
	type run struct{ from, to, in int }
	var runs []run
	var b strings.Builder
	b.Grow(len(s))
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c != 0 && c < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == 0 || r == utf8.RuneError {
			runs = append(runs, run{start, i, b.Len()})
			b.WriteString(s[start:i])
			start = i + size
		}
		i += size
	}
	runs = append(runs, run{start, len(s), b.Len()})
	b.WriteString(s[start:])
	joined := b.String()
	if !isSecretValue(joined) {
		return s
	}
	// at is where joined's byte j is in s.
	at := func(j int) int {
		k := sort.Search(len(runs), func(k int) bool { return runs[k].in+(runs[k].to-runs[k].from) > j })
		return runs[k].from + j - runs[k].in
	}
	var out strings.Builder
	last := 0
	for _, m := range secretValue.FindAllStringIndex(joined, -1) {
		out.WriteString(s[last:at(m[0])])
		out.WriteString(Redacted)
		last = at(m[1]-1) + 1
	}
	out.WriteString(s[last:])
	return out.String()
}

// RedactCut cleans s for a text column (pgtext.Clean) and cuts it to n
// bytes without leaving part of a key or token: whole ones are redacted
// before the cut (in the first 4n bytes), and one the cut ends inside is
// redacted from its start, however little of it is left.
func RedactCut(s string, n int) string {
	full := redactClean(pgtext.Clean(s, 4*n))
	out := pgtext.Clean(full, n) // full is clean: a prefix of it
	if len(out) == len(full) || !isKeyByte(full[len(out)]) {
		return out // not cut, or cut between words: nothing split
	}
	// The run of key characters the cut ended inside: a key's or token's
	// rest if it starts like one.
	start := len(out)
	for start > 0 && isKeyByte(out[start-1]) {
		start--
	}
	tail := out[start:]
	i := strings.Index(strings.ToLower(tail), "gmk_")
	if j := strings.Index(tail, "eyJ"); j >= 0 && (i < 0 || j < i) {
		i = j
	}
	if i < 0 {
		return out
	}
	// Within n with the marker: what comes before it gives way first.
	kept := pgtext.Clean(out[:start+i], max(n-len(Redacted), 0))
	return (kept + Redacted)[:min(len(kept)+len(Redacted), n)]
}

// isKeyByte is a byte a key or token may hold (secretValue's classes).
func isKeyByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '.' || c == '-'
}

func redact(v any, key string) any {
	if key != "" && isSecretKey(key) {
		return Redacted
	}
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			out[k] = redact(val, k)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, val := range t {
			out[i] = redact(val, "")
		}
		return out
	case string:
		if isSecretValue(t) {
			return Redacted
		}
	}
	return v
}

func canon(buf *bytes.Buffer, v any) error {
	switch t := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(t))
	case string:
		b, err := json.Marshal(stored(t))
		if err != nil {
			return err
		}
		buf.Write(b)
	case json.Number:
		if err := checkNumber(string(t)); err != nil {
			return err
		}
		r, ok := new(big.Rat).SetString(string(t))
		if !ok {
			return fmt.Errorf("audit metadata: bad number %q", t)
		}
		return writeRat(buf, r)
	case float64:
		if t == math.Trunc(t) && math.Abs(t) < 1<<53 { // an integer, exactly
			buf.WriteString(strconv.FormatInt(int64(t), 10))
			return nil
		}
		r := new(big.Rat)
		if r.SetFloat64(t) == nil {
			return fmt.Errorf("audit metadata: number %v has no JSON form", t)
		}
		return writeRat(buf, r)
	case int:
		buf.WriteString(fmt.Sprint(t))
	case int64:
		buf.WriteString(fmt.Sprint(t))
	case map[string]any:
		// Members are sorted by the names written (stored), so that the
		// text is canonical once read back. Two names that differ only by
		// NUL, bytes that are not UTF-8 and U+FFFD are written alike; jsonb
		// keeps one of two equal names: one member is written, the value
		// of the greater name as given, whatever the map's order.
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int {
			if c := strings.Compare(stored(a), stored(b)); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		buf.WriteByte('{')
		first := true
		for i, k := range keys {
			if i+1 < len(keys) && stored(keys[i+1]) == stored(k) {
				continue
			}
			if !first {
				buf.WriteByte(',')
			}
			first = false
			kb, _ := json.Marshal(stored(k))
			buf.Write(kb)
			buf.WriteByte(':')
			if err := canon(buf, t[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case []any:
		buf.WriteByte('[')
		for i, e := range t {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := canon(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case []string:
		arr := make([]any, len(t))
		for i := range t {
			arr[i] = t[i]
		}
		return canon(buf, arr)
	default:
		// Any other Go value: through JSON and back, generically.
		b, err := json.Marshal(t)
		if err != nil {
			return err
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var g any
		if err := dec.Decode(&g); err != nil {
			return err
		}
		return canon(buf, g)
	}
	return nil
}

// maxNumberText bounds a number's text, read or written: what Canonical
// writes must read back (the canonical form is a fixed point), so the
// bound applies to the exact decimal it writes, exponent expanded.
const maxNumberText = 200

// checkNumber bounds a number's text so that an exponent such as 1e999999
// cannot make an exact rational of a million digits.
func checkNumber(s string) error {
	if len(s) > maxNumberText {
		return fmt.Errorf("audit metadata: number %.20q... too long", s)
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		exp, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil || exp > 64 || exp < -64 {
			return fmt.Errorf("audit metadata: number %q out of range", s)
		}
	}
	return nil
}

// writeRat writes r as ratText does, refusing a decimal too long to be
// read back (1e64 has 65 digits; a float64 may have hundreds).
func writeRat(buf *bytes.Buffer, r *big.Rat) error {
	t := ratText(r)
	if !strings.HasPrefix(t, `"`) && len(t) > maxNumberText {
		return fmt.Errorf("audit metadata: number %.20s... out of range", t)
	}
	buf.WriteString(t)
	return nil
}

// ratText writes an exact number: an integer as such, else a decimal when
// it terminates, else a fraction (which JSON cannot hold, so quoted).
func ratText(r *big.Rat) string {
	if r.IsInt() {
		return r.Num().String()
	}
	if s, exact := r.FloatPrec(); exact {
		return r.FloatString(s)
	}
	return `"` + r.String() + `"`
}

// Hash computes a row's hash from its content and PrevHash. CustomerID is
// left out on purpose: deleting a customer sets it to NULL, which must not
// read as tampering. Every other stored field is covered, each length-
// prefixed so that no two rows share an encoding.
func Hash(r *Row) []byte {
	bp := hashBufs.Get().(*[]byte)
	b := (*bp)[:0]
	field := func(s string) {
		b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
	}
	if r.CustomerDigest != nil {
		field("guardian-audit-v2")
		field(string(r.CustomerDigest))
	} else {
		field("guardian-audit-v1") // a row written before customer_digest
	}
	field(r.WriterID)
	b = binary.BigEndian.AppendUint64(b, uint64(r.WriterSeq))
	field(string(r.PrevHash))
	field(r.KeyID)
	field(r.UserID)
	b = r.OccurredAt.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z")
	field(r.SourceIP)
	field(r.UserAgent)
	field(r.RequestID)
	field(r.Method)
	field(r.Path)
	field(r.ResourceType)
	field(r.ResourceID)
	field(r.Action)
	field(r.Result)
	b = binary.BigEndian.AppendUint64(b, uint64(r.StatusCode))
	field(r.Metadata)
	sum := sha256.Sum256(b)
	*bp = b
	hashBufs.Put(bp)
	return sum[:]
}

var hashBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Annotate sets a function's annotation on its response.
func Annotate(w http.ResponseWriter, a Annotation) { w.Header().Set(Header, a.Encode()) }
