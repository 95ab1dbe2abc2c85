package guardian

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestProvisionRequiresBothSecrets(t *testing.T) {
	t.Setenv("GUARDIAN_PG_APP_DSN", "postgres://guardian_app@127.0.0.1:1/guardian")
	t.Setenv("GUARDIAN_REDIS_ADDR", "127.0.0.1:1, 127.0.0.1:2")
	t.Setenv("GUARDIAN_KEY_PEPPER", strings.Repeat("k", 32))
	t.Setenv("GUARDIAN_SESSION_SECRET", "short-secret-value")
	var a App
	err := a.Provision(caddy.Context{})
	if err == nil || !strings.Contains(err.Error(), "GUARDIAN_SESSION_SECRET is too short") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "short-secret-value") {
		t.Fatal("error leaks the secret")
	}
	t.Setenv("GUARDIAN_SESSION_SECRET", strings.Repeat("s", 40))
	if err := a.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	if string(a.Secrets().SessionSecret) != strings.Repeat("s", 40) {
		t.Fatal("secret not kept")
	}
	if r := a.Redis(); len(r.Addrs) != 2 || !r.Cluster {
		t.Fatalf("redis settings %+v", r)
	}
}

func TestCaddyRefusesToStartWithoutAPepper(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		pepper string
		want   string
	}{
		{"missing pepper", "", "GUARDIAN_KEY_PEPPER is required"},
		{"short pepper", "pepper-value-that-is-too-short", "GUARDIAN_KEY_PEPPER is too short"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := testenv.StackEnv(t)
			if tc.pepper == "" {
				delete(env, "GUARDIAN_KEY_PEPPER")
			} else {
				env["GUARDIAN_KEY_PEPPER"] = tc.pepper
			}
			_, err := testenv.TryStartStack(t, env)
			if err == nil {
				t.Fatal("caddy started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("caddy's output does not say %q:\n%v", tc.want, err)
			}
			if tc.pepper != "" && strings.Contains(err.Error(), tc.pepper) {
				t.Fatal("caddy printed the pepper")
			}
		})
	}
}

// An empty GUARDIAN_CLIENT_IP_HEADERS would have Caddy read
// X-Forwarded-For, and two headers let the second be chosen by a client
// whose first is a trusted address: both are refused.
func TestClientIPHeadersNameOneHeader(t *testing.T) {
	for v, ok := range map[string]bool{"": false, "  ": false, "Cf-Connecting-Ip X-Forwarded-For": false, "Cf-Connecting-Ip": true, "X-Forwarded-For": true} {
		err := checkClientIPHeaders(func(string) (string, bool) { return v, true })
		if (err == nil) != ok {
			t.Errorf("%q: err = %v", v, err)
		}
	}
	if err := checkClientIPHeaders(func(string) (string, bool) { return "", false }); err != nil {
		t.Errorf("unset: %v", err)
	}
}

func TestTheAdminAPIIsAUnixSocket(t *testing.T) {
	for v, ok := range map[string]bool{"localhost:2019": false, ":2019": false, "tcp/127.0.0.1:2019": false, "": false,
		"unix/.run/caddy-admin.sock": true, "unix//run/guardian/admin.sock|0200": true} {
		if err := checkAdminAddr(func(string) (string, bool) { return v, true }); (err == nil) != ok {
			t.Errorf("%q: err = %v", v, err)
		}
	}
	if err := checkAdminAddr(func(string) (string, bool) { return "", false }); err != nil {
		t.Errorf("unset (the Caddyfile's unix socket): %v", err)
	}
}

// The edge's degradation metrics are scrapeable on a site of their own
// (loopback), and not on the public one.
func TestEdgeMetricsAreOnTheirOwnSite(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t, testenv.StackEnv(t))
	resp, err := http.Get(stack.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"guardian_ratelimit_redis_up", "guardian_audit_spool_full", "guardian_function_crashes_total", "guardian_auth_notifications_ignored_total"} {
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d, no %s", stack.MetricsURL, resp.StatusCode, want)
		}
	}
	if a := stack.Do(t, "GET", "/metrics", "", nil); a.Status != 404 {
		t.Fatalf("the public site's /metrics: %d", a.Status)
	}
	// Every metric the documented alert rules name is one the edge
	// serves: a misspelt rule would never fire.
	root, _ := testenv.RepoRoot()
	doc, err := os.ReadFile(filepath.Join(root, "docs", "deployment.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rules, ok := strings.Cut(string(doc), "- name: guardian-edge")
	rules, _, _ = strings.Cut(rules, "```")
	names := regexp.MustCompile(`guardian_[a-z_]+`).FindAllString(rules, -1)
	if !ok || len(names) < 8 {
		t.Fatalf("docs/deployment.md: the guardian-edge rules name %d metrics", len(names))
	}
	for _, name := range names {
		if !strings.Contains(string(body), "\n"+name) {
			t.Errorf("docs/deployment.md's rules name %s, which the edge does not serve", name)
		}
	}
}
