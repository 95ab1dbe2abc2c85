package function

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/glassmkr/guardian/shared/problem"
)

// Whatever a function answers with its 5xx, problemCode names one of the
// known codes, "none" or "other" (a compromised function adds no metric
// series), hands on the whole body as sent, however its length was
// declared, and names the code of a known problem it can read.
func FuzzProblemCode(f *testing.F) {
	f.Add(problem.ContentType, []byte(`{"type":"x","code":"busy","status":503}`), int64(-1))
	f.Add(problem.ContentType+"; charset=utf-8", []byte(`{"code":"made_up_series"}`), int64(5))
	f.Add(problem.ContentType, []byte(`{"code":"made_up_series"}`), int64(-1))
	f.Add("text/plain", []byte("oops"), int64(4))
	f.Add(problem.ContentType, bytes.Repeat([]byte("x"), 5000), int64(100000))
	f.Fuzz(func(t *testing.T, ctype string, body []byte, declared int64) {
		resp := &http.Response{Header: http.Header{"Content-Type": {ctype}}, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: declared}
		code := problemCode(resp)
		if code != "none" && code != "other" && !slices.Contains(problemCodes, code) {
			t.Fatalf("%q: code %q", body, code)
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("the body came on as %q (%v), sent %q", got, err, body)
		}
		var doc struct {
			Code string `json:"code"`
		}
		if ctype == problem.ContentType && len(body) <= maxProblem && (declared < 0 || declared == int64(len(body))) &&
			json.Unmarshal(body, &doc) == nil && slices.Contains(problemCodes, doc.Code) && code != doc.Code {
			t.Fatalf("%q: code %q, want %q", body, code, doc.Code)
		}
	})
}
