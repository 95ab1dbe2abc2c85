package audit

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
)

// FuzzClientTextMakesStorableRows: whatever a client puts in a path, a
// user agent or a method, the row the handler builds from it passes
// checkRow (so PostgreSQL will take it) and encodes.
func FuzzClientTextMakesStorableRows(f *testing.F) {
	f.Add("/api/v1/keys/\x00", "curl/8\xff", "GET")
	f.Add("/api/v1/\xe2\x82", "", "PROPFINDPROPFINDPROPFIND")
	f.Add(strings.Repeat("é", 1500), "ua", "M\x00")
	f.Fuzz(func(t *testing.T, path, ua, method string) {
		r := &audit.Row{RequestID: identity.NewRequestID(), Path: text(path, 2048), UserAgent: text(ua, 512),
			Method: text(method, 16), Action: "read", Result: "success", StatusCode: 200, Metadata: "{}"}
		for _, s := range []string{r.Path, r.UserAgent, r.Method} {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("%q is not storable text", s)
			}
		}
		if len(r.Path) > 2048 || len(r.UserAgent) > 512 {
			t.Fatalf("not cut: %d, %d bytes", len(r.Path), len(r.UserAgent))
		}
		if r.Method == "" {
			return // an empty method is refused, rightly; net/http never gives one
		}
		if err := checkRow(r); err != nil {
			t.Fatalf("checkRow: %v", err)
		}
		if _, err := copyBinary(nil, []*audit.Row{r}); err != nil {
			t.Fatalf("copyBinary: %v", err)
		}
	})
}
