package reqbody

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
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
	cases := []struct {
		name, ctype, body string
		status            int
		detail            string
	}{
		{"object", "application/json", `{"name":"a","count":2}`, 0, ""},
		{"charset", "application/json; charset=utf-8", `{"name":"a"}`, 0, ""},
		{"no type", "", `{"name":"a"}`, 0, ""},
		{"empty", "application/json", ``, 0, ""},
		{"blank", "application/json", " \n", 0, ""},
		{"text", "text/plain", `{"name":"a"}`, 415, "application/json"},
		{"form", "application/x-www-form-urlencoded", `name=a`, 415, "application/json"},
		{"bad media type", "application/", `{}`, 415, "application/json"},
		{"too large", "application/json", `{"name":"` + strings.Repeat("a", 100) + `"}`, 413, "at most 64 bytes"},
		{"trailing garbage", "application/json", `{"name":"a"} garbage`, 400, "more after the object"},
		{"two objects", "application/json", `{"name":"a"}{"name":"b"}`, 400, "more after the object"},
		{"array", "application/json", `[]`, 400, "not an object"},
		{"string", "application/json", `"a"`, 400, "not an object"},
		{"null", "application/json", `null`, 400, "not an object"},
		{"wrong type", "application/json", `{"count":"two"}`, 400, "count has the wrong type"},
		{"unknown field", "application/json", `{"owner":"me"}`, 400, `unknown field "owner"`},
		{"malformed", "application/json", `{"name":`, 400, "malformed JSON"},
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
				return
			}
			var doc map[string]any
			_ = json.Unmarshal(w.Body.Bytes(), &doc)
			detail, _ := doc["detail"].(string)
			if ok || w.Code != c.status || !strings.Contains(detail, c.detail) {
				t.Fatalf("ok %v, %d %q", ok, w.Code, detail)
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

func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"name":"a","count":2}`, ``, `[]`, `{"name":1}`, `{} x`, `{"owner":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var v request
		if err := Decode(body, &v); err != nil {
			if strings.Contains(err.Error(), string(body)) && len(body) > 8 {
				t.Fatalf("error %q echoes the body", err)
			}
			return
		}
		// Accepted: the body was exactly one object (or blank).
		if s := strings.TrimSpace(string(body)); s != "" && !json.Valid([]byte(s)) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
	})
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
