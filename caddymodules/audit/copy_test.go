package audit

import (
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/pgtext"
)

// FuzzClientTextMakesStorableRows: whatever a client puts in a path, a
// user agent or a method, the row the handler builds from it (with
// pgtext.Clean, fuzzed on its own too) passes checkRow, so PostgreSQL
// will take it, and encodes.
func FuzzClientTextMakesStorableRows(f *testing.F) {
	f.Add("/api/v1/keys/\x00", "curl/8\xff", "GET")
	f.Add("/api/v1/\xe2\x82", "", "PROPFINDPROPFINDPROPFIND")
	f.Add(strings.Repeat("é", 1500), "ua", "M\x00")
	f.Fuzz(func(t *testing.T, path, ua, method string) {
		r := &audit.Row{RequestID: identity.NewRequestID(), Path: pgtext.Clean(path, 2048), UserAgent: pgtext.Clean(ua, 512),
			Method: pgtext.Clean(method, 16), Action: "read", Result: "success", StatusCode: 200, Metadata: "{}"}
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
