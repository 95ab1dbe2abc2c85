package reqbody

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/glassmkr/guardian/shared/problem"
)

type request struct {
	Name  string `json:"name"`
	Count *int   `json:"count"`
}

func TestJSON(t *testing.T) {
	two := 2
	cases := []struct {
		name, ctype, body string
		status            int
		detail            string
		want              request // what an accepted body decodes to
	}{
		{"object", "application/json", `{"name":"a","count":2}`, 0, "", request{Name: "a", Count: &two}},
		{"charset", "application/json; charset=utf-8", `{"name":"a"}`, 0, "", request{Name: "a"}},
		{"no type", "", `{"name":"a"}`, 0, "", request{Name: "a"}},
		{"null members leave the zero value", "application/json", `{"name":null,"count":null}`, 0, "", request{}},
		{"the last of a member named twice wins", "application/json", `{"name":"a","count":1,"name":"b","count":2}`, 0, "", request{Name: "b", Count: &two}},
		{"escapes are decoded", "application/json", `{"name":"\u00e9\n"}`, 0, "", request{Name: "é\n"}},
		{"empty", "application/json", ``, 0, "", request{}},
		{"blank", "application/json", " \n", 0, "", request{}},
		{"text", "text/plain", `{"name":"a"}`, 415, "application/json", request{}},
		{"form", "application/x-www-form-urlencoded", `name=a`, 415, "application/json", request{}},
		{"bad media type", "application/", `{}`, 415, "application/json", request{}},
		{"too large", "application/json", `{"name":"` + strings.Repeat("a", 100) + `"}`, 413, "at most 64 bytes", request{}},
		{"trailing garbage", "application/json", `{"name":"a"} garbage`, 400, "more after the object", request{}},
		{"two objects", "application/json", `{"name":"a"}{"name":"b"}`, 400, "more after the object", request{}},
		{"array", "application/json", `[]`, 400, "not an object", request{}},
		{"string", "application/json", `"a"`, 400, "not an object", request{}},
		{"null", "application/json", `null`, 400, "not an object", request{}},
		{"wrong type", "application/json", `{"count":"two"}`, 400, "count has the wrong type", request{}},
		{"unknown field", "application/json", `{"owner":"me"}`, 400, `owner is an unknown field`, request{}},
		{"malformed", "application/json", `{"name":`, 400, "malformed JSON", request{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", strings.NewReader(c.body))
			if c.ctype != "" {
				r.Header.Set("Content-Type", c.ctype)
			}
			w := httptest.NewRecorder()
			var v request
			ok := JSON(w, r, 64, &v)
			if c.status == 0 {
				if !ok {
					t.Fatalf("refused: %d %s", w.Code, w.Body)
				}
				if !sameRequest(v, c.want) {
					t.Fatalf("decoded %s, want %s", v, c.want)
				}
				return
			}
			var doc map[string]any
			_ = json.Unmarshal(w.Body.Bytes(), &doc)
			detail, _ := doc["detail"].(string)
			if ok || w.Code != c.status || !strings.Contains(detail, c.detail) {
				t.Fatalf("ok %v, %d %q", ok, w.Code, detail)
			}
			// A member refused by name is named in field too (docs/api.md).
			want := map[string]string{"wrong type": "count", "unknown field": "owner"}[c.name]
			if field, _ := doc["field"].(string); field != want {
				t.Fatalf("field %q, want %q", field, want)
			}
		})
	}
}

// A read that fails for another reason than size is 400, not 413.
func TestJSONBrokenBody(t *testing.T) {
	r := httptest.NewRequest("POST", "/", errReader{})
	w := httptest.NewRecorder()
	if JSON(w, r, 1<<10, &request{}) || w.Code != http.StatusBadRequest {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, http.ErrHandlerTimeout }

// Decode accepts exactly one JSON object (or a blank body) whose members
// the target knows, with values of their types, and nothing after it;
// what it accepts reaches the target: each member's last value, null
// leaving the field as it was for a string and nil for a pointer. The
// reading here walks the members in order, independently of Decode.
// Errors never echo the body.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"name":"a","count":2}`, ``, `[]`, `{"name":1}`, `{} x`, `{"owner":1}`,
		` {"name":"a"} `, `{"name":"a"}{"name":"b"}`, `"a"`, `null`, `{"count":"two"}`, `{"name":`,
		`{"name":"a","name":null}`, `{"NAME":"a","Count":1,"count":null}`, `{"count":2.0}`, `{"count":1e2}`,
		`{"name":"\ud800"}`, `{"count":99999999999999999999}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var v request
		err := Decode(body, &v)
		want, ok := requestOf(body)
		if err != nil {
			if strings.Contains(err.Error(), string(body)) && len(body) > 8 {
				t.Fatalf("error %q echoes the body", err)
			}
			if ok {
				t.Fatalf("%q refused (%v), want %s", body, err, want)
			}
			return
		}
		if !ok {
			t.Fatalf("%q accepted as %s, want a refusal", body, v)
		}
		if !sameRequest(v, want) {
			t.Fatalf("%q decoded as %s, want %s", body, v, want)
		}
	})
}

func (r request) String() string {
	if r.Count == nil {
		return fmt.Sprintf("{%q <nil>}", r.Name)
	}
	return fmt.Sprintf("{%q %d}", r.Name, *r.Count)
}

func sameRequest(a, b request) bool {
	return a.Name == b.Name && (a.Count == nil) == (b.Count == nil) && (a.Count == nil || *a.Count == *b.Count)
}

// requestOf reads body as Decode documents it: blank, or one object and
// nothing after it but white space, whose members (any case, as
// encoding/json matches them) are name, a string or null, and count, an
// integer or null; the last of a member named twice wins.
func requestOf(body []byte) (request, bool) {
	var r request
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return r, true
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return r, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return r, false
		}
		var raw json.RawMessage
		if dec.Decode(&raw) != nil {
			return r, false
		}
		k, _ := tok.(string)
		switch {
		case strings.EqualFold(k, "name"):
			if string(raw) == "null" {
				continue
			}
			if raw[0] != '"' || json.Unmarshal(raw, &r.Name) != nil {
				return r, false
			}
		case strings.EqualFold(k, "count"):
			if string(raw) == "null" {
				r.Count = nil
				continue
			}
			n, err := strconv.ParseInt(string(raw), 10, strconv.IntSize)
			if err != nil {
				return r, false
			}
			c := int(n)
			r.Count = &c
		default:
			return r, false
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return r, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return r, false
	}
	return r, true
}

// readAll returns exactly what the reader holds whatever the declared
// length says, and reads a body of the declared length into one buffer.
func TestReadAllWhateverTheDeclaredLength(t *testing.T) {
	body := strings.Repeat("snapshot ", 500)
	for _, declared := range []int64{-1, 0, 1, 100, int64(len(body)) - 1, int64(len(body)), int64(len(body)) + 1, 1 << 20} {
		got, err := readAll(iotest.OneByteReader(strings.NewReader(body)), declared, 1<<16)
		if err != nil || string(got) != body {
			t.Errorf("declared %d: %d bytes (%v), want %d", declared, len(got), err, len(body))
		}
	}
	r := strings.NewReader(body)
	allocs := testing.AllocsPerRun(20, func() {
		r.Reset(body)
		if _, err := readAll(r, int64(len(body)), 1<<16); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("%.0f allocations for a body of its declared length, want 1", allocs)
	}
}

// A body declared large takes no more memory before its bytes arrive
// than preallocated, whatever the limit allows.
func TestReadAllDoesNotTakeTheDeclaredLengthInAdvance(t *testing.T) {
	got, err := readAll(strings.NewReader("{}"), 512<<10, 1<<20)
	if err != nil || string(got) != "{}" {
		t.Fatalf("%q %v", got, err)
	}
	if cap(got) > preallocated {
		t.Errorf("%d bytes taken for a body of 2, declared 512 KiB; want at most %d", cap(got), preallocated)
	}
}

// A problem the body's reader fails with (a bound on the bytes a caller
// holds) is the answer, as it is.
func TestABodyReadersProblemIsTheAnswer(t *testing.T) {
	busy := problem.New(503, "busy", "try again shortly")
	r := httptest.NewRequest("POST", "/", iotest.ErrReader(busy))
	w := httptest.NewRecorder()
	if _, ok := Read(w, r, 1<<10); ok {
		t.Fatal("read a body whose reader failed")
	}
	if w.Code != 503 || !strings.Contains(w.Body.String(), `"busy"`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

// chunks is a reader that hands out data in the read sizes sizes names
// (cycled; 0 is a read of nothing), as a client's packets arrive.
type chunks struct {
	data  []byte
	sizes []byte
	i     int
}

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(c.sizes) > 0 {
		n = min(n, int(c.sizes[c.i%len(c.sizes)]))
		c.i++
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

// Read answers exactly what io.ReadAll through the same bound would:
// the whole body when it fits the limit, 413 when it does not, whatever
// length the request declares and however its bytes arrive.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"name":"x"}`), int64(12), int64(64), []byte{1, 0, 3})
	f.Add([]byte(`{}`), int64(1<<20), int64(1), []byte{})
	f.Add(bytes.Repeat([]byte("a"), 300), int64(299), int64(300), []byte{255, 7})
	f.Add(bytes.Repeat([]byte("b"), 301), int64(-1), int64(300), []byte{0, 0, 9})
	f.Fuzz(func(t *testing.T, data []byte, declared, limit int64, sizes []byte) {
		if limit < 0 || limit > 1<<20 || len(sizes) > 64 {
			return
		}
		if !slices.ContainsFunc(sizes, func(s byte) bool { return s != 0 }) {
			sizes = nil // only empty reads would never end
		}
		want, wantErr := io.ReadAll(http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(bytes.NewReader(data)), limit))
		got, err := readAll(http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(&chunks{data: data, sizes: sizes}), limit), declared, limit)
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("readAll: %d bytes, %v; io.ReadAll: %d bytes, %v", len(got), err, len(want), wantErr)
		}
		// A body no longer than declared is read into the buffer sized
		// for it, which is at most preallocated bytes: past that, memory
		// is taken only as bytes come.
		if declared > 0 && declared <= limit && len(got) <= int(declared) && len(got) < preallocated && cap(got) > min(int(declared)+1, preallocated) {
			t.Fatalf("%d bytes taken for %d declared, %d read", cap(got), declared, len(got))
		}

		r := httptest.NewRequest("POST", "/", &chunks{data: data, sizes: sizes})
		r.ContentLength = declared
		w := httptest.NewRecorder()
		body, ok := Read(w, r, limit)
		switch {
		case int64(len(data)) > limit:
			if ok || w.Code != http.StatusRequestEntityTooLarge {
				t.Fatalf("%d bytes over a limit of %d: ok %v, %d", len(data), limit, ok, w.Code)
			}
		case !ok || !bytes.Equal(body, data):
			t.Fatalf("%d bytes under a limit of %d: ok %v, %d, %d bytes read", len(data), limit, ok, w.Code, len(body))
		}
	})
}
