package mfa

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/glassmkr/guardian/shared/mfa/mfatest"
)

// An assertion checkAssertion accepts, whatever its bytes, is one the
// registered key signed for this ceremony: read a second way (the JSON
// and base64url by hand, the signature with crypto/ecdsa), its client
// data names the ceremony's challenge, a WebAuthn get and the site's
// origin, its authenticator data this relying party and a user present,
// and the key's signature covers both. Seeds: the genuine assertion, and
// ones that must fail (a wrong signature, another origin, another
// ceremony's challenge).
func FuzzCheckAssertion(f *testing.F) {
	const origin = "https://app.example.com"
	wa, err := relyingParty(origin, "")
	if err != nil {
		f.Fatal(err)
	}
	u := &waUser{handle: bytes.Repeat([]byte{7}, 16), name: "a@example.com"}
	auth := mfatest.New(origin)
	reg, rsd, err := wa.BeginRegistration(u)
	if err != nil {
		f.Fatal(err)
	}
	created, err := auth.Create(mustJSON(f, reg))
	if err != nil {
		f.Fatal(err)
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(created)
	if err != nil {
		f.Fatal(err)
	}
	cred, err := wa.CreateCredential(u, *rsd, parsed)
	if err != nil {
		f.Fatal(err)
	}
	u.creds = []webauthn.Credential{*cred}
	login, sd, err := wa.BeginLogin(u, webauthn.WithUserVerification(protocol.VerificationPreferred))
	if err != nil {
		f.Fatal(err)
	}
	// Fuzzing runs as long as it is asked to; the ceremony's expiry is
	// not what is under test.
	sd.Expires = time.Now().Add(7 * 24 * time.Hour)
	options := mustJSON(f, login)
	get := func(a *mfatest.Authenticator, options []byte) []byte {
		b, err := a.Get(options)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(get(auth.Clone(), options))
	forged := auth.Clone()
	forged.BadSignature = true
	f.Add(get(forged, options))
	phish := auth.Clone()
	phish.Origin = "https://app.example.com.evil.test"
	f.Add(get(phish, options))
	other, _, err := wa.BeginLogin(u)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(get(auth.Clone(), mustJSON(f, other)))
	f.Add([]byte(`{"id":"","type":"public-key","response":{}}`))

	pub := auth.PublicKey()
	rpHash := sha256.Sum256([]byte("app.example.com"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fresh := &waUser{handle: u.handle, name: u.name, creds: []webauthn.Credential{*cred}}
		got, err := checkAssertion(wa, *sd, data, func() (*waUser, error) { return fresh, nil })
		if err != nil {
			return
		}
		var a struct {
			ID       string          `json:"id"`
			RawID    json.RawMessage `json:"rawId"`
			Response struct {
				ClientDataJSON    json.RawMessage `json:"clientDataJSON"`
				AuthenticatorData json.RawMessage `json:"authenticatorData"`
				Signature         json.RawMessage `json:"signature"`
				UserHandle        json.RawMessage `json:"userHandle"`
			} `json:"response"`
		}
		if err := json.Unmarshal(data, &a); err != nil {
			t.Fatalf("accepted JSON that does not parse: %v", err)
		}
		client, authData, sig := b64url(t, a.Response.ClientDataJSON), b64url(t, a.Response.AuthenticatorData), b64url(t, a.Response.Signature)
		var cd struct{ Type, Challenge, Origin string }
		if err := json.Unmarshal(client, &cd); err != nil {
			t.Fatalf("accepted client data that does not parse: %v", err)
		}
		if cd.Type != "webauthn.get" || cd.Challenge != sd.Challenge || cd.Origin != origin {
			t.Fatalf("accepted client data for another ceremony: %+v, want the challenge %q", cd, sd.Challenge)
		}
		if len(authData) < 37 || !bytes.Equal(authData[:32], rpHash[:]) || authData[32]&0x01 == 0 {
			t.Fatalf("accepted authenticator data of another relying party or without a user present: %x", authData)
		}
		clientHash := sha256.Sum256(client)
		digest := sha256.Sum256(append(append([]byte{}, authData...), clientHash[:]...))
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("accepted an assertion the registered key did not sign")
		}
		if id, err := base64.RawURLEncoding.DecodeString(a.ID); err != nil || !bytes.Equal(id, auth.CredentialID()) {
			t.Fatalf("accepted an assertion with the id %q (%v)", a.ID, err)
		}
		if id := a.RawID; id != nil && string(id) != "null" && !bytes.Equal(b64url(t, id), auth.CredentialID()) {
			t.Fatal("accepted an assertion naming another credential")
		}
		if h := a.Response.UserHandle; h != nil && string(h) != "null" {
			if hb := b64url(t, h); len(hb) > 0 && !bytes.Equal(hb, u.handle) {
				t.Fatalf("accepted an assertion for another user handle: %x", hb)
			}
		}
		if count := binary.BigEndian.Uint32(authData[33:37]); got.Authenticator.SignCount != count {
			t.Fatalf("accepted with the signature counter %d, the authenticator said %d", got.Authenticator.SignCount, count)
		}
	})
}

// b64url decodes a JSON string of base64url, as a browser sends binary
// members (padding tolerated).
func b64url(t *testing.T, raw json.RawMessage) []byte {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("accepted %s, which is not a JSON string: %v", raw, err)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		t.Fatalf("accepted %q, which is not base64url: %v", s, err)
	}
	return b
}

func mustJSON(f *testing.F, v any) []byte {
	f.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
