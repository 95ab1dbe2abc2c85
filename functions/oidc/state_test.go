package main

import (
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

const testSecret = "0123456789abcdef0123456789abcdef"

func sealed(t *testing.T, s *sealer, f flow) string {
	t.Helper()
	v, err := s.seal(f)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestStateCookie(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s, err := newSealer([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newSealer([]byte(testSecret + "x"))
	good := flow{State: "st", Nonce: "no", Verifier: "verifier-kept-secret", Expires: now.Add(stateTTL).Unix()}
	value := sealed(t, s, good)

	if got, err := s.open(value, now); err != nil || got != good {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	raw := mustDecode(t, value)
	if strings.Contains(string(raw), good.Verifier) {
		t.Fatal("the verifier is readable in the cookie")
	}
	raw[len(raw)/2] ^= 1
	flipped := base64.RawURLEncoding.EncodeToString(raw)
	for _, tc := range []struct {
		name string
		open func() error
		want error
	}{
		{"an empty cookie is missing", func() error { _, err := s.open("", now); return err }, errStateMissing},
		{"one altered character is refused", func() error { _, err := s.open(string(flipped), now); return err }, errStateInvalid},
		{"a cookie sealed under another secret is refused", func() error { _, err := other.open(value, now); return err }, errStateInvalid},
		{"an expired cookie is refused", func() error { _, err := s.open(value, now.Add(stateTTL)); return err }, errStateExpired},
		{"an oversized cookie is refused unread", func() error { _, err := s.open(strings.Repeat("A", maxStateCookie+1), now); return err }, errStateInvalid},
		{"padding and foreign alphabets are refused", func() error { _, err := s.open(value+"=", now); return err }, errStateInvalid},
		{"a sealed flow without a verifier is refused", func() error {
			_, err := s.open(sealed(t, s, flow{State: "st", Nonce: "no", Expires: good.Expires}), now)
			return err
		}, errStateInvalid},
	} {
		if err := tc.open(); err != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	if !good.matches("st") || good.matches("sT") || good.matches("") || (flow{}).matches("") {
		t.Fatal("state comparison is wrong")
	}
}

func mustDecode(t *testing.T, v string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStateCookieAttributes(t *testing.T) {
	now := time.Now()
	c := flowCookie("v", now, now.Add(stateTTL))
	raw := c.String()
	for _, want := range []string{"HttpOnly", "Secure", "SameSite=Lax", "Path=/auth/google/", "Max-Age=600"} {
		if !strings.Contains(raw, want) {
			t.Errorf("%q lacks %s", raw, want)
		}
	}
	if strings.Contains(raw, "Domain=") {
		t.Errorf("the state cookie should be host-only: %q", raw)
	}
	if clear := clearFlowCookie().String(); !strings.Contains(clear, "Max-Age=0") || !strings.Contains(clear, "Path=/auth/google/") {
		t.Errorf("clearing cookie: %q", clear)
	}
}

func TestAStateIsUsedOnce(t *testing.T) {
	u := newUsedStates()
	now := time.Now()
	if !u.use("a", now.Add(time.Minute), now) || u.use("a", now.Add(time.Minute), now) {
		t.Fatal("the second use of a state was accepted")
	}
	if !u.use("b", now.Add(time.Minute), now) {
		t.Fatal("another state was refused")
	}
	// Entries go once their cookie has expired.
	u.use("c", now.Add(2*time.Minute), now.Add(90*time.Second))
	if len(u.seen) != 1 || len(u.order) != 1 {
		t.Fatalf("expired entries kept: %v", u.seen)
	}
	// Past the bound, the oldest are forgotten first; the newest stay used.
	u.max = 3
	for _, s := range []string{"d", "e", "f", "g"} {
		if !u.use(s, now.Add(2*time.Minute), now.Add(90*time.Second)) {
			t.Fatalf("fresh state %q refused", s)
		}
	}
	if len(u.seen) != 3 || len(u.order) != 3 {
		t.Fatalf("%d states held past a bound of 3: %v", len(u.seen), u.seen)
	}
	if _, ok := u.seen["c"]; ok {
		t.Fatal("the oldest state was kept past the bound")
	}
	if u.use("g", now.Add(2*time.Minute), now.Add(90*time.Second)) {
		t.Fatal("the newest state was accepted twice")
	}
}

func TestCustomerName(t *testing.T) {
	for _, tc := range []struct {
		name string
		g    googleUser
		want string
	}{
		{"a Workspace domain names the organisation", googleUser{Email: "a@acme.io", Name: "Ann", HostedDomain: "acme.io"}, "acme.io"},
		{"else the person's name", googleUser{Email: "a@gmail.com", Name: "Ann Lee"}, "Ann Lee"},
		{"else the address's domain", googleUser{Email: "a@example.org"}, "example.org"},
		{"long names are cut on a character boundary", googleUser{Email: "a@b.c", Name: strings.Repeat("é", 300)}, strings.Repeat("é", 200)},
	} {
		if got := customerName(tc.g); got != tc.want {
			t.Errorf("%s: %q", tc.name, got)
		}
	}
}

func TestRefusalOf(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	token := func(claims map[string]any) string {
		b, _ := json.Marshal(claims)
		return "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(b) + ".c2ln"
	}
	for _, tc := range []struct {
		name   string
		claims map[string]any
		want   string
	}{
		{"another issuer", map[string]any{"iss": "https://evil", "aud": "client"}, "wrong_issuer"},
		{"another client", map[string]any{"iss": "https://idp", "aud": []string{"other"}}, "wrong_audience"},
		{"expired", map[string]any{"iss": "https://idp", "aud": "client", "exp": now.Add(-time.Minute).Unix()}, "id_token_expired"},
		{"claims fine, so the signature", map[string]any{"iss": "https://idp", "aud": "client", "exp": now.Add(time.Minute).Unix()}, "id_token_signature"},
		// Past 2^63 an int64 conversion wraps negative, which read as expired.
		{"an end too far ahead for an int64", map[string]any{"iss": "https://idp", "aud": "client", "exp": 1e19}, "id_token_signature"},
		{"the largest int64", map[string]any{"iss": "https://idp", "aud": "client", "exp": int64(9223372036854775807)}, "id_token_signature"},
	} {
		if got := refusalOf(token(tc.claims), "https://idp", "client", now); got != tc.want {
			t.Errorf("%s: %s", tc.name, got)
		}
	}
	if got := refusalOf("not a token", "https://idp", "client", now); got != "id_token_invalid" {
		t.Errorf("garbage: %s", got)
	}
}

func FuzzNextPage(f *testing.F) {
	for _, s := range []string{"/settings/keys", "/settings/sessions", "//evil.example/settings/", "/settings/../login", `/settings\x`, "/settings/%2e%2e/x", "/api/v1/keys"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, next string) {
		got := nextPage(next)
		if got == "" {
			return
		}
		// Where a browser on the dashboard goes when redirected there: it
		// drops tabs and newlines, reads \ as /, decodes %2e as a dot and
		// then resolves dot segments, against the page's origin.
		base, _ := url.Parse("https://app.example/auth/google/callback")
		browser := strings.NewReplacer("\t", "", "\n", "", "\r", "", "\\", "/", "%2e", ".", "%2E", ".").Replace(got)
		u, err := url.Parse(browser)
		if got != next || err != nil {
			t.Fatalf("nextPage(%q) = %q (%v)", next, got, err)
		}
		to := base.ResolveReference(u)
		if to.Scheme != "https" || to.Host != "app.example" || !strings.HasPrefix(to.Path, "/settings/") {
			t.Fatalf("nextPage(%q) = %q, which a browser follows to %s: not a page of this dashboard", next, got, to)
		}
	})
}
