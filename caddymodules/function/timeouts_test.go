package function

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	_ "github.com/caddyserver/caddy/v2/modules/metrics"

	_ "github.com/glassmkr/guardian/caddymodules/audit"
	_ "github.com/glassmkr/guardian/caddymodules/auth"
	_ "github.com/glassmkr/guardian/caddymodules/guardian"
	_ "github.com/glassmkr/guardian/caddymodules/headers"
	_ "github.com/glassmkr/guardian/caddymodules/problem"
	_ "github.com/glassmkr/guardian/caddymodules/ratelimit"
)

// The repository's Caddyfile, as deployed (no timeout overridden): the
// server's write timeout is a ceiling no route can lift, so it must
// exceed every function's timeout, or a long answer the function is
// allowed is cut at it; the audit log's CSV export (up to 100,000 rows,
// some 60 MB) gets minutes, enough at about 1 Mbit/s; and a client that
// stops reading is still cut soon (write_idle).
func TestTheCaddyfilesTimeoutsLetAnExportFinish(t *testing.T) {
	for _, v := range []string{"GUARDIAN_WRITE_TIMEOUT", "GUARDIAN_WRITE_IDLE_TIMEOUT", "GUARDIAN_AUDIT_EXPORT_TIMEOUT"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	body, err := os.ReadFile("../../Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	out, _, err := adapter.Adapt(body, map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	type route struct {
		Match  []map[string]json.RawMessage `json:"match"`
		Handle []json.RawMessage            `json:"handle"`
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					WriteTimeout     time.Duration `json:"write_timeout"`
					WriteIdleTimeout time.Duration `json:"write_idle_timeout"`
					Routes           []route       `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	const defaultTimeout = 30 * time.Second // Provision's
	withFunctions := 0
	for name, srv := range cfg.Apps.HTTP.Servers {
		idle := srv.WriteIdleTimeout
		if idle == 0 {
			idle = time.Minute // Caddy's default; negative turns it off
		}
		if idle < 0 || idle > time.Minute {
			t.Errorf("%s: write_idle %s: a client that stops reading must be cut within a minute", name, idle)
		}
		var export time.Duration
		functions := 0 // the metrics site's server has none
		var walk func(routes []route, csv bool)
		walk = func(routes []route, csv bool) {
			for _, r := range routes {
				matchesCSV := csv
				for _, m := range r.Match {
					if q, ok := m["query"]; ok && string(q) == `{"format":["csv"]}` {
						matchesCSV = true
					}
				}
				for _, raw := range r.Handle {
					var h struct {
						Handler string        `json:"handler"`
						Name    string        `json:"name"`
						Bin     string        `json:"bin"`
						Timeout time.Duration `json:"timeout"`
						Routes  []route       `json:"routes"`
					}
					if err := json.Unmarshal(raw, &h); err != nil {
						t.Fatal(err)
					}
					walk(h.Routes, matchesCSV)
					if h.Handler != "guardian_function" {
						continue
					}
					functions++
					timeout := h.Timeout
					if timeout == 0 {
						timeout = defaultTimeout
					}
					if srv.WriteTimeout > 0 && srv.WriteTimeout <= timeout {
						t.Errorf("%s: function %s may answer for %s, but the server cuts every answer at %s", name, h.Name, timeout, srv.WriteTimeout)
					}
					if strings.HasSuffix(h.Bin, "/functions/audit") && matchesCSV {
						export = timeout
					}
				}
			}
		}
		walk(srv.Routes, false)
		if functions > 0 {
			withFunctions++
		}
		if functions > 0 && export < 8*time.Minute {
			t.Errorf("%s: the audit log's CSV export gets %s; 60 MB at 1 Mbit/s takes 8 minutes", name, export)
		}
	}
	if withFunctions != 1 {
		t.Errorf("%d servers with function routes, want the public site's", withFunctions)
	}
}
