package audit

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
)

// FuzzClientTextMakesStorableRows: whatever a client puts in a path, a
// user agent or a method, and whatever a function puts in its annotation,
// the row the handler builds (Handler.row) passes checkRow, so PostgreSQL
// will take it, and encodes; no key pasted into the path or user agent
// reaches it.
func FuzzClientTextMakesStorableRows(f *testing.F) {
	f.Add("/api/v1/keys/\x00", "curl/8\xff", "GET", `{"resource_type":"api_key","resource_id":"x\u0000"}`, "")
	f.Add("/api/v1/\xe2\x82", "", "PROPFINDPROPFINDPROPFIND", `{"metadata":{"a":"\ud800"}}`, "unknown_key")
	f.Add(strings.Repeat("é", 1500), "ua", "M\x00", `{"customer_id":"00000000-0000-0000-0000-000000000001","action":"delete"}`, "")
	key, err := apikey.Generate(apikey.Account)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("/api/v1/keys/"+key, "agent "+key, "DELETE", `{"resource_id":"`+key+`"}`, "missing")
	f.Fuzz(func(t *testing.T, path, ua, method, ann, why string) {
		r := &http.Request{Method: method, URL: &url.URL{Path: path}, Header: http.Header{"User-Agent": {ua}}, RemoteAddr: "192.0.2.1:5000"}
		r = r.WithContext(context.Background())
		h := &Handler{log: zap.NewNop()}
		row := h.row(r, nil, why, 200, ann, time.Now(), identity.NewRequestID())
		if row.Method == "" {
			return // an empty method is refused, rightly; net/http never gives one
		}
		if err := checkRow(row); err != nil {
			t.Fatalf("checkRow: %v", err)
		}
		if _, err := copyBinary(nil, []*audit.Row{row}); err != nil {
			t.Fatalf("copyBinary: %v", err)
		}
		if !json.Valid([]byte(row.Metadata)) {
			t.Fatalf("metadata %q is not JSON", row.Metadata)
		}
		// Nothing that looks like a credential is left to redact.
		for _, text := range []string{row.Path, row.UserAgent, row.ResourceID} {
			if audit.RedactText(text) != text {
				t.Fatalf("%q still holds a credential", text)
			}
		}
	})
}
