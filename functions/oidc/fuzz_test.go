package main

import (
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/glassmkr/guardian/shared/pgtext"
)

const base64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// A state cookie opens only when this sealer sealed it: any other value
// (the fuzzer cannot forge an AES-GCM tag) is refused as missing (empty)
// or invalid, and opens to no flow. A flow sealed opens to itself, or is
// refused for what is wrong with it (too long to be a cookie, a member
// missing, expired); it does not open under another secret; and one
// character changed, one cut off or one added gets it refused.
func FuzzOpenStateCookie(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	s, err := newSealer([]byte(testSecret))
	if err != nil {
		f.Fatal(err)
	}
	other, err := newSealer([]byte(testSecret + "x"))
	if err != nil {
		f.Fatal(err)
	}
	good := flow{State: "st", Nonce: "no", Verifier: "verifier-kept-secret", Expires: now.Add(stateTTL).Unix(), Next: "/settings/keys"}
	// Cookies sealed under another secret are well-formed values that
	// must not open.
	foreign, err := other.seal(good)
	if err != nil {
		f.Fatal(err)
	}
	for _, v := range []string{foreign, foreign + "=", "", "A", strings.Repeat("A", maxStateCookie+1), "not base64!", strings.Repeat("A", 40)} {
		f.Add(v, good.State, good.Nonce, good.Verifier, good.Next, int64(stateTTL/time.Second), false, uint16(0), uint8(0))
	}
	f.Add("x", "st", "", "v", "", int64(60), true, uint16(7), uint8(200))
	f.Add("x", "st", "no", "v", "", int64(0), false, uint16(70), uint8(3))
	f.Add("x", "\xff", "no", "v", strings.Repeat("/settings/", 90), int64(-1), true, uint16(1000), uint8(63))
	f.Fuzz(func(t *testing.T, value, state, nonce, verifier, next string, expiresIn int64, reauth bool, pos uint16, delta uint8) {
		got, err := s.open(value, now)
		if want := map[bool]error{true: errStateMissing, false: errStateInvalid}[value == ""]; err != want || got != (flow{}) {
			t.Fatalf("open(%q) = %+v, %v; want %v", value, got, err, want)
		}

		fl := flow{State: state, Nonce: nonce, Verifier: verifier, Expires: now.Unix() + expiresIn, Reauth: reauth, Next: next}
		v, err := s.seal(fl)
		if err != nil {
			t.Fatal(err)
		}
		var want error
		switch {
		case len(v) > maxStateCookie, state == "", nonce == "", verifier == "":
			want = errStateInvalid
		case !now.Before(time.Unix(fl.Expires, 0)):
			want = errStateExpired
		}
		got, err = s.open(v, now)
		if err != want || (err == nil && got != asStored(t, fl)) || (err != nil && got != (flow{})) {
			t.Fatalf("sealed %+v opens to %+v, %v; want %v", fl, got, err, want)
		}
		if got, err := other.open(v, now); err != errStateInvalid || got != (flow{}) {
			t.Fatalf("a cookie sealed under another secret opens: %+v, %v", got, err)
		}
		i := int(pos) % len(v)
		c := strings.IndexByte(base64URL, v[i])
		changed := v[:i] + string(base64URL[(c+1+int(delta)%63)%64]) + v[i+1:]
		for _, bad := range []string{changed, v[:len(v)-1], v + "A", v[1:]} {
			if got, err := s.open(bad, now); err != errStateInvalid || got != (flow{}) {
				t.Fatalf("%q, altered from %q, opens: %+v, %v", bad, v, got, err)
			}
		}
	})
}

// asStored is fl as JSON keeps it (text not UTF-8 is made so).
func asStored(t *testing.T, fl flow) flow {
	b, err := json.Marshal(fl)
	if err != nil {
		t.Fatal(err)
	}
	var out flow
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

var refusals = []string{"id_token_invalid", "wrong_issuer", "wrong_audience", "id_token_expired", "id_token_signature"}

// refusalOf names one of its reasons for any token. For a token of three
// parts whose claims the test wrote, the reason is the first that holds,
// by the test's own reading: another issuer, then the client not in the
// audience (a string or a list), then an exp (seconds, maybe with a
// fraction) in the past, else the signature. Anything else than three parts with a JSON payload is
// id_token_invalid.
func FuzzRefusalOf(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	const issuer, client = "https://idp", "client"
	f.Add("not a token", "https://evil", "client", false, 0.0, false)
	f.Add("a.b.c", "https://idp", "other,client", true, float64(now.Add(-time.Minute).Unix()), true)
	f.Add("eyJhbGciOiJSUzI1NiJ9.bnVsbA.c2ln", "https://idp", "client", false, float64(now.Add(time.Minute).Unix()), true)
	f.Add("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2ln", "https://idp", "other", true, -5.0, true)
	f.Add("..", "https://idp", "client", false, float64(now.Unix())+0.5, true)
	f.Add("", "https://idp", "client", false, 4e18, true) // far in the future
	f.Fuzz(func(t *testing.T, raw, iss, aud string, audList bool, exp float64, withExp bool) {
		got := refusalOf(raw, issuer, client, now)
		if !slices.Contains(refusals, got) {
			t.Fatalf("refusalOf(%q) = %q, not a reason", raw, got)
		}
		if got != "id_token_invalid" {
			parts := strings.Split(raw, ".")
			b, err := base64.RawURLEncoding.DecodeString(parts[min(1, len(parts)-1)])
			if len(parts) != 3 || err != nil || !json.Valid(b) {
				t.Fatalf("refusalOf(%q) = %q for what is not a token", raw, got)
			}
		}

		claims := map[string]any{"iss": iss, "aud": aud}
		if audList {
			claims["aud"] = strings.Split(aud, ",")
		}
		if withExp {
			claims["exp"] = exp
		}
		payload, err := json.Marshal(claims)
		if err != nil {
			return // NaN or an infinity, which JSON has not
		}
		token := "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(payload) + ".c2ln"
		want := "id_token_signature"
		switch {
		case iss != issuer:
			want = "wrong_issuer"
		case audList && !slices.Contains(strings.Split(aud, ","), client), !audList && aud != client:
			want = "wrong_audience"
		case withExp && exp > 0 && float64(now.Unix()) > exp:
			want = "id_token_expired"
		}
		if got := refusalOf(token, issuer, client, now); got != want {
			t.Fatalf("claims %s: refusalOf = %q, want %q", payload, got, want)
		}
		// The same exp in a token of the right issuer and audience.
		payload, _ = json.Marshal(map[string]any{"iss": issuer, "aud": client, "exp": exp})
		want = "id_token_signature"
		if exp > 0 && float64(now.Unix()) > exp {
			want = "id_token_expired"
		}
		if got := refusalOf("e30."+base64.RawURLEncoding.EncodeToString(payload)+".c2ln", issuer, client, now); got != want {
			t.Fatalf("claims %s: refusalOf = %q, want %q", payload, got, want)
		}
	})
}

// check admits a token's claims only with the flow's nonce, a subject and
// an e-mail address the users table can hold (3 to 320 characters, an
// '@', text PostgreSQL takes), verified as a boolean true or the string
// "true"; whatever the provider's user put in them.
func FuzzCheckClaims(f *testing.F) {
	f.Add("n", "n", "sub-1", " Ada@Example.com ", `true`)
	f.Add("n", "m", "sub-1", "ada@example.com", `"true"`)
	f.Add("n", "n", "", "a@b", `1`)
	f.Add("n", "n", "s", "a\x00@b.c", `true`)
	f.Add("n", "n", "s", strings.Repeat("é", 318)+"@b", `"TRUE"`)
	f.Fuzz(func(t *testing.T, nonce, flowNonce, subject, email, verified string) {
		h := &handler{idp: &idp{clientID: "client"}}
		c := idClaims{Email: email, EmailVerified: json.RawMessage(verified)}
		why := h.check(&oidc.IDToken{Nonce: nonce, Subject: subject, Audience: []string{"client"}}, flow{Nonce: flowNonce}, c)
		if why != "" {
			return
		}
		e := strings.TrimSpace(email)
		n := utf8.RuneCountInString(e)
		if nonce != flowNonce || subject == "" || len(subject) > 255 || !pgtext.Valid(subject) ||
			n < 3 || n > 320 || !strings.Contains(e, "@") || !pgtext.Valid(e) || (verified != "true" && verified != `"true"`) {
			t.Fatalf("admitted nonce %q/%q, subject %q, e-mail %q, verified %q", nonce, flowNonce, subject, email, verified)
		}
	})
}

// A new customer's name is never empty, always text PostgreSQL takes, at
// most the 200 characters its column holds; it is the Workspace domain,
// else the person's name, else the address's domain, as given when that
// fits.
func FuzzCustomerName(f *testing.F) {
	f.Add("example.com", "Ada", "ada@example.com")
	f.Add(" ", " Ada Lovelace ", "ada@example.com")
	f.Add("", "", "ada@example.com")
	f.Add("", "\x00", "a@b")
	f.Add("", strings.Repeat("ŝ", 300), "a@b")
	f.Fuzz(func(t *testing.T, hd, name, email string) {
		if n := utf8.RuneCountInString(email); n < 3 || n > 320 || !strings.Contains(email, "@") || !pgtext.Valid(email) {
			return // refused by check before an account is made
		}
		got := customerName(googleUser{Email: email, Name: name, HostedDomain: hd})
		if n := utf8.RuneCountInString(got); n < 1 || n > 200 || !pgtext.Valid(got) {
			t.Fatalf("%q, %q, %q: name %q (%d characters)", hd, name, email, got, n)
		}
		fits := func(s string) bool {
			return s != "" && pgtext.Valid(s) && utf8.RuneCountInString(s) <= 200
		}
		switch h, p := strings.TrimSpace(hd), strings.TrimSpace(name); {
		case fits(h) && got != h:
			t.Fatalf("Workspace domain %q gave %q", h, got)
		case h == "" && fits(p) && got != p:
			t.Fatalf("name %q gave %q", p, got)
		}
	})
}
