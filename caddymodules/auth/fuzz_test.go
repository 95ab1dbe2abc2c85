package auth

import (
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/session"
)

// credential takes a Bearer token from the Authorization header whenever
// one is sent, whatever the cookies say; any other scheme is a bad
// credential (present, empty). Without the header it takes the session
// cookie's value as the browser sent it, and only a cookie value can be
// fromCookie. With neither there is no credential.
func FuzzCredential(f *testing.F) {
	token := "gmk_acct_live_003AuLtjc7TJLctqJ2Unu3mfAGcxg9lrkrCWgKbidLF_zfKj"
	for _, s := range []struct{ authorization, cookie, value string }{
		{"", "", ""},
		{" ", "", ""},
		{"Bearer ", "", ""},
		{"Basic dXNlcjpwYXNz", "", ""},
		{"Bearer " + token, "", ""},
		{"bearer  " + token + " ", "", "eyJ.x.y"},
		{"BearerX " + token, "", ""},
		{"", "other=1", "eyJhbGciOiJIUzI1NiIs.x.y"},
		{"", "guardian_token=a; guardian_token=b", ""},
		{"", `guardian_token="quoted"`, ""},
		{"", "guardian_token=", ""},
		{"", "guardian_token=a b;", "a,b"},
	} {
		f.Add(s.authorization, s.cookie, s.value)
	}
	f.Fuzz(func(t *testing.T, authorization, cookieHeader, value string) {
		r := httptest.NewRequest("GET", "/", nil)
		if authorization != "" {
			r.Header["Authorization"] = []string{authorization}
		}
		if cookieHeader != "" {
			r.Header["Cookie"] = []string{cookieHeader}
		}
		cred, fromCookie, present, ambiguous := credential(r)
		if authorization != "" {
			if !present || fromCookie || ambiguous {
				t.Fatalf("Authorization %q: present %v, fromCookie %v", authorization, present, fromCookie)
			}
			scheme, rest, ok := strings.Cut(authorization, " ")
			want := ""
			if ok && strings.EqualFold(scheme, "bearer") {
				want = strings.TrimSpace(rest)
			}
			if cred != want {
				t.Fatalf("Authorization %q gives %q, want %q", authorization, cred, want)
			}
			return
		}
		// More than one session cookie, whatever their values: none.
		if n := len(r.CookiesNamed(session.CookieName)); ambiguous != (n > 1) || ambiguous && (cred != "" || !fromCookie || !present) {
			t.Fatalf("Cookie %q (%d session cookies): %q, fromCookie %v, present %v, ambiguous %v", cookieHeader, n, cred, fromCookie, present, ambiguous)
		}
		if ambiguous {
			return
		}
		if !fromCookie && (cred != "" || present) || fromCookie && (cred == "" || !present) {
			t.Fatalf("Cookie %q: %q, fromCookie %v, present %v", cookieHeader, cred, fromCookie, present)
		}
		if fromCookie && !cookieValue(cred) {
			t.Fatalf("Cookie %q gives %q, not a cookie value", cookieHeader, cred)
		}
		// The session cookie, as a browser sends it, alone or among
		// others, quoted or not, is taken as it is.
		if cookieValue(value) && value != "" && value == strings.Trim(value, " ") {
			for _, header := range []string{session.CookieName + "=" + value, session.CookieName + `="` + value + `"`, "a=1; " + session.CookieName + "=" + value + "; b=2"} {
				r := httptest.NewRequest("GET", "/", nil)
				r.Header["Cookie"] = []string{header}
				if cred, fromCookie, present, ambiguous := credential(r); cred != value || !fromCookie || !present || ambiguous {
					t.Fatalf("Cookie %q gives %q, fromCookie %v, present %v, ambiguous %v", header, cred, fromCookie, present, ambiguous)
				}
			}
			// Beside another, even of the same value, it is none.
			r := httptest.NewRequest("GET", "/", nil)
			r.Header["Cookie"] = []string{session.CookieName + "=" + value + "; a=1; " + session.CookieName + "=" + value}
			if cred, _, _, ambiguous := credential(r); cred != "" || !ambiguous {
				t.Fatalf("two session cookies give %q, ambiguous %v", cred, ambiguous)
			}
		}
	})
}

// cookieValue reports whether s holds only bytes RFC 6265 allows in a
// cookie value (and Go's server tolerates: space and comma).
func cookieValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == ';' || c == '\\' {
			return false
		}
	}
	return true
}

// crossSite refuses what a browser says comes from another site unless
// its Origin is trusted, refuses an Origin that is neither the request's
// host nor trusted, and leaves alone clients that send neither header.
// For an Origin as browsers send it (scheme://host[:port]), the verdict is
// exactly "another host and not trusted".
func FuzzCrossSite(f *testing.F) {
	for _, s := range []struct{ site, origin, host, trusted string }{
		{"cross-site", "https://evil.example", "guardian.example", ""},
		{"same-origin", "http://guardian.example", "guardian.example", ""},
		{"same-site", "https://app.guardian.example", "guardian.example", "https://app.guardian.example"},
		{"", "", "guardian.example", ""},
		{"none", "null", "guardian.example", "null"},
		{"", "HTTPS://Dashboard.Example", "guardian.example", "https://dashboard.example"},
		{"", "https://guardian.example:8443", "guardian.example:8443", ""},
		{"", "https://evil.example@guardian.example", "guardian.example", ""},
		{"", "https://%zz", "guardian.example", ""},
		{"cross-site", "http://guardian.example", "guardian.example", ""},
	} {
		f.Add(s.site, s.origin, s.host, s.trusted)
	}
	f.Fuzz(func(t *testing.T, site, origin, host, trustedList string) {
		var trusted []string
		if trustedList != "" {
			trusted = strings.Split(trustedList, ",")
		}
		r := httptest.NewRequest("POST", "/", nil)
		r.Host = host
		if site != "" {
			r.Header["Sec-Fetch-Site"] = []string{site}
		}
		if origin != "" {
			r.Header["Origin"] = []string{origin}
		}
		got := crossSite(r, trusted)
		browserSaysCrossSite := site == "cross-site" || site == "same-site"
		switch {
		case browserSaysCrossSite:
			if got != !trustedBy(trusted, origin) {
				t.Fatalf("Sec-Fetch-Site %s from %q (trusted %q): cross-site %v", site, origin, trusted, got)
			}
		case origin == "":
			if got {
				t.Fatalf("no Origin, Sec-Fetch-Site %q: refused as cross-site", site)
			}
		case origin == "null":
			if !got {
				t.Fatal("Origin null let through")
			}
		case !got:
			// Let through: its host is the request's, or it is trusted.
			u, err := url.Parse(origin)
			if !trustedBy(trusted, origin) && (err != nil || u.Host != host) {
				t.Fatalf("Origin %q let through to %q (trusted %q)", origin, host, trusted)
			}
		}
		// Trusting the Origin lets it through (unless it is null or not
		// a URL at all).
		if _, err := url.Parse(origin); got && origin != "" && origin != "null" && err == nil && crossSite(r, append(trusted, origin)) {
			t.Fatalf("Origin %q refused though trusted (Sec-Fetch-Site %q)", origin, site)
		}
		// A browser's Origin is scheme://host[:port]: its own host is let
		// through, another refused.
		if !browserSaysCrossSite && browserHost(host) {
			for _, scheme := range []string{"https://", "http://"} {
				r.Header["Origin"] = []string{scheme + host}
				if crossSite(r, trusted) {
					t.Fatalf("Origin %s%s refused for its own host", scheme, host)
				}
				other := scheme + "other-" + host
				r.Header["Origin"] = []string{other}
				if crossSite(r, trusted) != !trustedBy(trusted, other) {
					t.Fatalf("Origin %s to %s (trusted %q): cross-site %v", other, host, trusted, !crossSite(r, trusted))
				}
			}
		}
	})
}

func trustedBy(trusted []string, origin string) bool {
	for _, o := range trusted {
		if strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

// browserHost reports whether h is a host[:port] a browser could put in an
// Origin: letters, digits, dots, hyphens and a port.
func browserHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':') {
			return false
		}
	}
	if strings.Count(h, ":") > 1 || strings.HasSuffix(h, ":") || strings.HasPrefix(h, ":") {
		return false
	}
	// A port is digits (a browser sends no other): "0:a" is no host.
	if _, port, ok := strings.Cut(h, ":"); ok && strings.Trim(port, "0123456789") != "" {
		return false
	}
	return true
}

// cookiePaths lists every cookie path that path-matches p (RFC 6265
// 5.1.4: a prefix of p that is p, ends in "/", or stops before a "/"),
// "/" first, at most maxCookiePaths of them, none twice: clearing a
// planted session cookie misses none a browser could send with p.
func FuzzCookiePaths(f *testing.F) {
	for _, p := range []string{"/", "/api/v1/servers", "/settings/", "/a//b", "/%2F/x", strings.Repeat("/a", 20)} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if !strings.HasPrefix(p, "/") {
			return // request paths start with one
		}
		got := cookiePaths(p)
		if len(got) == 0 || got[0] != "/" || len(got) > maxCookiePaths {
			t.Fatalf("cookiePaths(%q) = %q", p, got)
		}
		seen := map[string]bool{}
		for _, c := range got {
			if seen[c] {
				t.Fatalf("cookiePaths(%q) = %q lists %q twice", p, got, c)
			}
			seen[c] = true
			if !strings.HasPrefix(p, c) {
				t.Fatalf("cookiePaths(%q) lists %q, which does not path-match it", p, c)
			}
		}
		var matching []string
		for n := 1; n <= len(p); n++ {
			c := p[:n]
			if c == p || strings.HasSuffix(c, "/") || p[n] == '/' {
				matching = append(matching, c)
			}
		}
		if len(matching) <= maxCookiePaths {
			for _, c := range matching {
				if !seen[c] {
					t.Fatalf("cookiePaths(%q) = %q misses %q", p, got, c)
				}
			}
		}
	})
}
