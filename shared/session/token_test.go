package session

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	secret   = []byte(strings.Repeat("s", 32))
	sid      = "0b0e7a52-6c1a-4f4e-9a51-5b2f7c6f1d11"
	uid      = "1c1e7a52-6c1a-4f4e-9a51-5b2f7c6f1d22"
	cid      = "2d2e7a52-6c1a-4f4e-9a51-5b2f7c6f1d33"
	issuedAt = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
)

func validClaims() Claims {
	return Claims{CustomerID: cid, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: issuer, Audience: jwt.ClaimStrings{audience}, Subject: uid, ID: sid,
		IssuedAt: jwt.NewNumericDate(issuedAt), NotBefore: jwt.NewNumericDate(issuedAt),
		ExpiresAt: jwt.NewNumericDate(issuedAt.Add(Lifetime)),
	}}
}

func sign(t *testing.T, method jwt.SigningMethod, key any, c Claims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestIssueThenVerify(t *testing.T) {
	tok, err := Issue(secret, sid, uid, cid, issuedAt, issuedAt.Add(Lifetime))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Verify(secret, tok, issuedAt.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if c.SessionID() != sid || c.UserID() != uid || c.CustomerID != cid {
		t.Fatalf("claims %+v", c)
	}
	if !c.ValidAt(issuedAt.Add(time.Hour)) || c.ValidAt(issuedAt.Add(Lifetime+time.Minute)) || c.ValidAt(issuedAt.Add(-time.Minute)) {
		t.Fatal("ValidAt disagrees with Verify's window")
	}
	if _, err := Issue(secret[:31], sid, uid, cid, issuedAt, issuedAt.Add(Lifetime)); err == nil {
		t.Fatal("short secret accepted")
	}
}

func TestVerifyRefuses(t *testing.T) {
	now := issuedAt.Add(time.Hour)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := sign(t, jwt.SigningMethodHS256, secret, validClaims())
	parts := strings.Split(good, ".")
	with := func(f func(*Claims)) string {
		c := validClaims()
		f(&c)
		return sign(t, jwt.SigningMethodHS256, secret, c)
	}
	cases := []struct {
		name  string
		token string
		now   time.Time
	}{
		{"empty token", "", now},
		{"oversized token", strings.Repeat("a", MaxTokenLen+1), now},
		{"garbage", "not.a.jwt", now},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, validClaims()), now},
		{"RS256", sign(t, jwt.SigningMethodRS256, rsaKey, validClaims()), now},
		{"ES256", sign(t, jwt.SigningMethodES256, ecKey, validClaims()), now},
		{"HS512 with the right secret", sign(t, jwt.SigningMethodHS512, secret, validClaims()), now},
		{"wrong secret", sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), validClaims()), now},
		{"expired", good, issuedAt.Add(Lifetime + time.Minute)},
		{"not yet valid", good, issuedAt.Add(-time.Minute)},
		{"tampered payload", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"cid":"`+cid+`","sub":"`+uid+`","jti":"`+sid+`","iss":"guardian","aud":["guardian-dashboard"],"exp":9999999999,"nbf":1,"iat":1}`)) + "." + parts[2], now},
		{"tampered signature", parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2])), now},
		{"wrong issuer", with(func(c *Claims) { c.Issuer = "someone" }), now},
		{"wrong audience", with(func(c *Claims) { c.Audience = jwt.ClaimStrings{"api"} }), now},
		{"no expiry", with(func(c *Claims) { c.ExpiresAt = nil }), now},
		{"no not-before", with(func(c *Claims) { c.NotBefore = nil }), now},
		{"issued in the future", with(func(c *Claims) { c.IssuedAt = jwt.NewNumericDate(now.Add(time.Hour)) }), now},
		{"session id not a uuid", with(func(c *Claims) { c.ID = "1 OR 1=1" }), now},
		{"missing customer", with(func(c *Claims) { c.CustomerID = "" }), now},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Verify(secret, tc.token, tc.now); !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	// Rotating the secret ends every session.
	if _, err := Verify([]byte(strings.Repeat("n", 32)), good, now); !errors.Is(err, ErrInvalid) {
		t.Fatal("token valid under a new secret")
	}
}

func TestCookieAttributes(t *testing.T) {
	c := Cookie("tok", ".glassmkr.com", issuedAt.Add(Lifetime), issuedAt)
	s := c.String()
	for _, want := range []string{"guardian_token=tok", "Path=/", "Domain=glassmkr.com", "Max-Age=604800", "HttpOnly", "Secure", "SameSite=Lax"} {
		if !strings.Contains(s, want) {
			t.Errorf("cookie %q lacks %q", s, want)
		}
	}
	if local := Cookie("tok", "", issuedAt.Add(Lifetime), issuedAt).String(); strings.Contains(local, "Domain") {
		t.Errorf("localhost cookie has a Domain: %q", local)
	}
	if clear := ClearCookie("").String(); !strings.Contains(clear, "Max-Age=0") {
		t.Errorf("clear cookie %q", clear)
	}
}

func FuzzVerify(f *testing.F) {
	good, _ := Issue(secret, sid, uid, cid, issuedAt, issuedAt.Add(Lifetime))
	f.Add(good)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := Verify(secret, tok, issuedAt.Add(time.Hour))
		if err == nil && (c.SessionID() != sid || tok != good) {
			// Only a token we signed can verify.
			t.Fatalf("accepted %q", tok)
		}
	})
}

// BenchmarkVerify is a full session-token verification (what the edge's
// token cache saves on every warm request).
func BenchmarkVerify(b *testing.B) {
	tok, err := Issue(secret, sid, uid, cid, issuedAt, issuedAt.Add(Lifetime))
	if err != nil {
		b.Fatal(err)
	}
	now := issuedAt.Add(time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(secret, tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzVerifySignedClaims signs whatever claims the fuzzer makes with the
// real secret (the fuzzer cannot forge the HMAC, so FuzzVerify never gets
// past it): a token Verify accepts names this issuer and audience, is
// within its validity at the time given, and carries well-formed ids.
func FuzzVerifySignedClaims(f *testing.F) {
	good, _ := Issue(secret, sid, uid, cid, issuedAt, issuedAt.Add(Lifetime))
	body, _ := base64.RawURLEncoding.DecodeString(strings.Split(good, ".")[1])
	f.Add(string(body), int64(3600))
	f.Add(`{"cid":"x","iss":"guardian","aud":"guardian-dashboard","sub":"y","jti":"z","exp":9999999999,"nbf":0,"iat":0}`, int64(0))
	f.Add(`{"iss":"guardian","aud":["other","guardian-dashboard"],"exp":1.5e9}`, int64(-60))
	f.Fuzz(func(t *testing.T, claims string, offset int64) {
		head := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
		signing := head + "." + base64.RawURLEncoding.EncodeToString([]byte(claims))
		sig, err := jwt.SigningMethodHS256.Sign(signing, secret)
		if err != nil {
			t.Fatal(err)
		}
		now := issuedAt.Add(time.Duration(offset%(30*86400)) * time.Second)
		c, err := Verify(secret, signing+"."+base64.RawURLEncoding.EncodeToString(sig), now)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refused with %v, not ErrInvalid", err)
			}
			return
		}
		if c.Issuer != issuer || !slices.Contains(c.Audience, audience) {
			t.Fatalf("accepted issuer %q, audience %q", c.Issuer, c.Audience)
		}
		if c.ExpiresAt == nil || c.NotBefore == nil || c.IssuedAt == nil || !c.ValidAt(now) || c.IssuedAt.After(now.Add(leeway)) {
			t.Fatalf("accepted at %s claims exp %v nbf %v iat %v", now, c.ExpiresAt, c.NotBefore, c.IssuedAt)
		}
		if !uuidRE.MatchString(c.SessionID()) || !uuidRE.MatchString(c.UserID()) || !uuidRE.MatchString(c.CustomerID) {
			t.Fatalf("accepted ids %q %q %q", c.SessionID(), c.UserID(), c.CustomerID)
		}
	})
}
