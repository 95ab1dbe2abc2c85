// Package caddyfiletest fuzzes the Caddyfile adapter with Guardian's
// directives registered, plus only the standard ones the repository's
// Caddyfile uses (header, file_server; the rest are the adapter's
// built-ins), so that the fuzzer's inputs reach our directive parsers
// rather than every standard module's.
package caddyfiletest

import (
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"

	_ "github.com/glassmkr/guardian/caddymodules/audit"
	_ "github.com/glassmkr/guardian/caddymodules/auth"
	_ "github.com/glassmkr/guardian/caddymodules/function"
	_ "github.com/glassmkr/guardian/caddymodules/guardian"
	_ "github.com/glassmkr/guardian/caddymodules/headers"
	_ "github.com/glassmkr/guardian/caddymodules/problem"
	_ "github.com/glassmkr/guardian/caddymodules/ratelimit"
)

// directiveSeeds exercise each of Guardian's directives and its global
// option on their own, valid and not.
var directiveSeeds = []string{
	":80 {\n\tguardian_auth {\n\t\tallow key session\n\t\tscope read\n\t\tscope POST write\n\t\tsession_scope read\n\t\toptional ignore_invalid\n\t\tlogin_redirect /login\n\t}\n}\n",
	":80 {\n\tguardian_ratelimit ip {\n\t\tmode failures\n\t}\n\tguardian_ratelimit account\n}\n",
	":80 {\n\tguardian_function whoami {\n\t\tbin /bin/true\n\t\tenv A b\n\t\tidle_timeout 5m\n\t}\n}\n",
	":80 {\n\tguardian_headers\n\tguardian_problem\n\tguardian_audit\n}\n",
	"{\n\tguardian {\n\t\tcookie_domain example.com\n\t}\n}\n:80 {\n\trespond ok\n}\n",
	":80 {\n\tguardian_auth {\n\t\tscope\n\t}\n}\n",
	":80 {\n\tguardian_ratelimit nonsense 1 2 3\n}\n",
	":80 {\n\tguardian_function {\n\t\tidle_timeout -1\n\t}\n}\n",
}

// FuzzCaddyfile runs the Caddyfile adapter, with Guardian's directives
// registered, on arbitrary input: a typo or hostile edit in a Caddyfile
// must end in an error that names the place, never a panic.
func FuzzCaddyfile(f *testing.F) {
	if repo, err := os.ReadFile("../../Caddyfile"); err == nil {
		f.Add(string(repo))
	}
	for _, s := range directiveSeeds {
		f.Add(s)
	}
	adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	f.Fuzz(func(t *testing.T, body string) {
		if len(body) > 64<<10 || strings.Contains(body, "import") {
			t.Skip() // import reads files and globs: not what this target is about
		}
		_, _, _ = adapter.Adapt([]byte(body), map[string]any{"filename": "Caddyfile"})
	})
}

// TestRepositoryCaddyfileAdapts keeps the fuzz target's main seed honest:
// the repository's Caddyfile itself must adapt without error.
func TestRepositoryCaddyfileAdapts(t *testing.T) {
	body, err := os.ReadFile("../../Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	if _, warnings, err := adapter.Adapt(body, map[string]any{"filename": "../../Caddyfile"}); err != nil {
		t.Fatalf("adapt: %v (warnings %v)", err, warnings)
	}
}
