// Package caddyfiletest fuzzes the Caddyfile adapter with Guardian's
// directives registered, plus only the standard ones the repository's
// Caddyfile uses (header, file_server; the rest are the adapter's
// built-ins), so that the fuzzer's inputs reach our directive parsers
// rather than every standard module's.
package caddyfiletest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	_ "github.com/caddyserver/caddy/v2/modules/metrics"

	_ "github.com/glassmkr/guardian/caddymodules/audit"
	"github.com/glassmkr/guardian/caddymodules/auth"
	_ "github.com/glassmkr/guardian/caddymodules/function"
	_ "github.com/glassmkr/guardian/caddymodules/guardian"
	_ "github.com/glassmkr/guardian/caddymodules/headers"
	_ "github.com/glassmkr/guardian/caddymodules/problem"
	"github.com/glassmkr/guardian/caddymodules/ratelimit"
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
	// An import of a bare name no snippet defines looks for a file beside
	// the Caddyfile: in a directory that does not exist, it finds none.
	filename := filepath.Join(f.TempDir(), "absent", "Caddyfile")
	f.Fuzz(func(t *testing.T, body string) {
		if len(body) > 64<<10 {
			t.Skip()
		}
		if why := importReadsFiles(body); why != "" {
			t.Skip(why) // reading files and globs is not what this target is about
		}
		// Each of Guardian's directives the Caddyfile parser accepts is
		// the same module once through JSON, which is what Caddy runs: a
		// setting the JSON form drops or changes would vanish silently.
		if tokens, err := caddyfile.Tokenize(expandEnv([]byte(body)), "Caddyfile"); err == nil {
			for i, tok := range tokens {
				var parsed caddyfile.Unmarshaler
				switch tok.Text {
				case "guardian_auth":
					parsed = new(auth.Handler)
				case "guardian_ratelimit":
					parsed = new(ratelimit.Handler)
				default:
					continue
				}
				if parsed.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens[i:])) != nil {
					continue
				}
				raw, err := json.Marshal(parsed)
				if err != nil {
					t.Fatalf("%s: %v", tok.Text, err)
				}
				loaded := reflect.New(reflect.TypeOf(parsed).Elem()).Interface()
				if err := json.Unmarshal(raw, loaded); err != nil {
					t.Fatalf("%s's JSON %s does not load: %v", tok.Text, raw, err)
				}
				if field, same := sameExported(parsed, loaded); !same {
					t.Fatalf("%s: %s is %v as parsed, %v through JSON %s", tok.Text, field,
						reflect.Indirect(reflect.ValueOf(parsed).Elem().FieldByName(field)), reflect.Indirect(reflect.ValueOf(loaded).Elem().FieldByName(field)), raw)
				}
			}
		}
		out, _, err := adapter.Adapt([]byte(body), map[string]any{"filename": filename})
		if err != nil {
			return
		}
		// What the Caddyfile accepted, the module accepts as JSON: the
		// config Caddy loads is the adapter's JSON, not the Caddyfile, so
		// a setting the JSON loses or changes would be lost silently.
		var cfg any
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("the adapter's config is not JSON: %v", err)
		}
		eachHandler(cfg, func(name string, raw json.RawMessage) {
			var v interface{ Validate() error }
			switch name {
			case "guardian_auth":
				v = new(auth.Handler)
			case "guardian_ratelimit":
				v = new(ratelimit.Handler)
			default:
				return
			}
			if err := json.Unmarshal(raw, v); err != nil {
				t.Fatalf("%s's JSON %s does not load: %v", name, raw, err)
			}
			if err := v.Validate(); err != nil {
				t.Fatalf("%s accepted in the Caddyfile, refused as JSON %s: %v", name, raw, err)
			}
		})
	})
}

// sameExported compares the exported fields of two pointers to structs of
// one type, returning the first that differs.
func sameExported(a, b any) (string, bool) {
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for i := range va.NumField() {
		if f := va.Type().Field(i); f.IsExported() && !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			return f.Name, false
		}
	}
	return "", true
}

// eachHandler calls fn with the name and JSON of every object in v that
// has a "handler" member.
func eachHandler(v any, fn func(name string, raw json.RawMessage)) {
	switch x := v.(type) {
	case map[string]any:
		if name, ok := x["handler"].(string); ok {
			raw, _ := json.Marshal(x)
			fn(name, raw)
		}
		for _, e := range x {
			eachHandler(e, fn)
		}
	case []any:
		for _, e := range x {
			eachHandler(e, fn)
		}
	}
}

// importReadsFiles says why an import in body could read a file or glob,
// or "" if every import names a snippet the body defines. It looks at the
// tokens the adapter parses (environment variables expanded first, as the
// adapter does), and errs on the side of saying yes: an import line with
// a path-like argument, a name no "(snippet)" in body defines, or any
// {args...} or {block...} placeholder in a body that imports at all (a
// snippet's argument can become an import directive or its name).
func importReadsFiles(body string) string {
	expanded := expandEnv([]byte(body))
	if !bytes.Contains(expanded, []byte("import")) {
		return ""
	}
	tokens, err := caddyfile.Tokenize(expanded, "Caddyfile")
	if err != nil {
		return "" // the adapter fails on the same tokens before any import
	}
	snippets := map[string]bool{}
	for _, tok := range tokens {
		if s := tok.Text; len(s) > 2 && s[0] == '(' && s[len(s)-1] == ')' {
			snippets[s[1:len(s)-1]] = true
		}
		if strings.Contains(tok.Text, "{args") || strings.Contains(tok.Text, "{block") {
			return "import with placeholders"
		}
	}
	for i, tok := range tokens {
		if tok.Text != "import" {
			continue
		}
		if i+1 == len(tokens) || !snippets[tokens[i+1].Text] {
			return "import of a file"
		}
		for _, arg := range tokens[i+1:] {
			if arg.Line != tok.Line {
				break
			}
			if strings.ContainsAny(arg.Text, "/*") || strings.Contains(arg.Text, "..") {
				return "import with a path"
			}
		}
	}
	return ""
}

func TestImportReadsFiles(t *testing.T) {
	t.Setenv("GUARDIAN_TEST_IMPORT", "/etc/passwd")
	for _, tc := range []struct {
		name, body string
		reads      bool
	}{
		{"no import", ":80 {\n\trespond ok\n}\n", false},
		{"a snippet the body defines", "(s) {\n\theader X 1\n}\n:80 {\n\timport s\n}\n", false},
		{"a snippet named through an environment default", "(l_all) {\n\tbind 0.0.0.0\n}\n:80 {\n\timport l_{$GUARDIAN_TEST_UNSET:all}\n}\n", false},
		{"a name no snippet defines", ":80 {\n\timport s\n}\n", true},
		{"an absolute path", "import /etc/passwd\n", true},
		{"a path from the environment", "(s) {\n}\nimport {$GUARDIAN_TEST_IMPORT}\n", true},
		{"a glob", "(s) {\n}\nimport s *\n", true},
		{"a parent directory", "(s) {\n}\nimport s ..\n", true},
		{"an argument that becomes the directive", "(s) {\n\t{args[0]} x\n}\n:80 {\n\timport s import\n}\n", true},
		{"a block that becomes the name", "(s) {\n\timport {block}\n}\n:80 {\n\timport s {\n\t\tx\n\t}\n}\n", true},
	} {
		if got := importReadsFiles(tc.body) != ""; got != tc.reads {
			t.Errorf("%s: reads files %v, want %v", tc.name, got, tc.reads)
		}
	}
	body, err := os.ReadFile("../../Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if why := importReadsFiles(string(body)); why != "" {
		t.Errorf("the repository's Caddyfile, the main seed, would be skipped: %s", why)
	}
}

// expandEnv replaces {$NAME} and {$NAME:default} as the Caddyfile adapter
// does before it reads tokens: one pass, left to right, the replacement
// not read again.
func expandEnv(b []byte) []byte {
	var out []byte
	for {
		i := bytes.Index(b, []byte("{$"))
		if i < 0 {
			return append(out, b...)
		}
		j := bytes.IndexByte(b[i+2:], '}')
		if j < 0 {
			return append(out, b...)
		}
		out = append(out, b[:i]...)
		if spec := string(b[i+2 : i+2+j]); spec != "" {
			name, def, hasDef := strings.Cut(spec, ":")
			v, ok := os.LookupEnv(name)
			if !ok && hasDef {
				v = def
			}
			out = append(out, v...)
		} else {
			out = append(out, "{$}"...)
		}
		b = b[i+2+j+1:]
	}
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
