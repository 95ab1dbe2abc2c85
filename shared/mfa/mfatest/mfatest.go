package mfatest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/go-webauthn/webauthn/protocol/webauthncbor"
)

// Authenticator holds one credential once Create made it.
type Authenticator struct {
	// Origin is what the "browser" puts in clientDataJSON, e.g.
	// http://localhost:8080. Change it to play a phishing site.
	Origin string
	// Counter is the signature counter of the last answer.
	Counter uint32
	// BadSignature makes Get sign the wrong data.
	BadSignature bool

	key    *ecdsa.PrivateKey
	credID []byte
	handle []byte
	rpID   string
}

// New returns an authenticator that answers as a browser at origin would.
func New(origin string) *Authenticator { return &Authenticator{Origin: origin} }

// CredentialID is the credential's id (nil before Create).
func (a *Authenticator) CredentialID() []byte { return a.credID }

var b64 = base64.RawURLEncoding

type descriptor struct {
	ID   string `json:"id"`
	Type string `json:"type"`
}

type creationOptions struct {
	PublicKey struct {
		Challenge string `json:"challenge"`
		RP        struct {
			ID string `json:"id"`
		} `json:"rp"`
		User struct {
			ID string `json:"id"`
		} `json:"user"`
		Exclude []descriptor `json:"excludeCredentials"`
	} `json:"publicKey"`
}

type requestOptions struct {
	PublicKey struct {
		Challenge string       `json:"challenge"`
		RPID      string       `json:"rpId"`
		Allow     []descriptor `json:"allowCredentials"`
	} `json:"publicKey"`
}

const (
	flagUP = 0x01
	flagUV = 0x04
	flagAT = 0x40
)

// Create answers creation options ({"publicKey": {...}}, as the relying
// party sent them) with a new credential, as the JSON a browser posts.
func (a *Authenticator) Create(options []byte) ([]byte, error) {
	var o creationOptions
	if err := json.Unmarshal(options, &o); err != nil {
		return nil, fmt.Errorf("mfatest: creation options: %w", err)
	}
	if o.PublicKey.Challenge == "" || o.PublicKey.RP.ID == "" {
		return nil, errors.New("mfatest: creation options lack a challenge or rp.id")
	}
	for _, d := range o.PublicKey.Exclude {
		if a.credID != nil && d.ID == b64.EncodeToString(a.credID) {
			return nil, errors.New("mfatest: InvalidStateError: this authenticator is excluded")
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	credID := make([]byte, 32)
	if _, err := rand.Read(credID); err != nil {
		return nil, err
	}
	handle, err := b64.DecodeString(o.PublicKey.User.ID)
	if err != nil {
		return nil, fmt.Errorf("mfatest: user.id: %w", err)
	}
	a.key, a.credID, a.handle, a.rpID, a.Counter = key, credID, handle, o.PublicKey.RP.ID, 0

	pub, err := key.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, err
	}
	cose, err := webauthncbor.Marshal(map[int]any{1: 2, 3: -7, -1: 1, -2: pub[1:33], -3: pub[33:65]})
	if err != nil {
		return nil, err
	}
	rpHash := sha256.Sum256([]byte(a.rpID))
	auth := append([]byte{}, rpHash[:]...)
	auth = append(auth, flagUP|flagUV|flagAT)
	auth = binary.BigEndian.AppendUint32(auth, a.Counter)
	auth = append(auth, make([]byte, 16)...) // AAGUID: none
	auth = binary.BigEndian.AppendUint16(auth, uint16(len(credID)))
	auth = append(auth, credID...)
	auth = append(auth, cose...)
	att, err := webauthncbor.Marshal(map[string]any{"fmt": "none", "attStmt": map[string]any{}, "authData": auth})
	if err != nil {
		return nil, err
	}
	client, _ := json.Marshal(map[string]any{"type": "webauthn.create", "challenge": o.PublicKey.Challenge, "origin": a.Origin, "crossOrigin": false})
	return json.Marshal(map[string]any{
		"id": b64.EncodeToString(credID), "rawId": b64.EncodeToString(credID), "type": "public-key",
		"authenticatorAttachment": "cross-platform", "clientExtensionResults": map[string]any{},
		"response": map[string]any{
			"clientDataJSON":    b64.EncodeToString(client),
			"attestationObject": b64.EncodeToString(att),
			"transports":        []string{"usb"},
		},
	})
}

// Get answers request options ({"publicKey": {...}}) with an assertion,
// as the JSON a browser posts.
func (a *Authenticator) Get(options []byte) ([]byte, error) {
	if a.key == nil {
		return nil, errors.New("mfatest: no credential yet")
	}
	var o requestOptions
	if err := json.Unmarshal(options, &o); err != nil {
		return nil, fmt.Errorf("mfatest: request options: %w", err)
	}
	if o.PublicKey.Challenge == "" {
		return nil, errors.New("mfatest: request options lack a challenge")
	}
	if o.PublicKey.RPID != "" && o.PublicKey.RPID != a.rpID {
		return nil, fmt.Errorf("mfatest: NotAllowedError: rpId %q, credential of %q", o.PublicKey.RPID, a.rpID)
	}
	if len(o.PublicKey.Allow) > 0 && !slices.ContainsFunc(o.PublicKey.Allow, func(d descriptor) bool { return d.ID == b64.EncodeToString(a.credID) }) {
		return nil, errors.New("mfatest: NotAllowedError: this credential is not allowed")
	}
	a.Counter++
	rpHash := sha256.Sum256([]byte(a.rpID))
	auth := append([]byte{}, rpHash[:]...)
	auth = append(auth, flagUP|flagUV)
	auth = binary.BigEndian.AppendUint32(auth, a.Counter)
	client, _ := json.Marshal(map[string]any{"type": "webauthn.get", "challenge": o.PublicKey.Challenge, "origin": a.Origin, "crossOrigin": false})
	clientHash := sha256.Sum256(client)
	signed := append(append([]byte{}, auth...), clientHash[:]...)
	if a.BadSignature {
		signed = append(signed, 0)
	}
	digest := sha256.Sum256(signed)
	sig, err := ecdsa.SignASN1(rand.Reader, a.key, digest[:])
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{
		"id": b64.EncodeToString(a.credID), "rawId": b64.EncodeToString(a.credID), "type": "public-key",
		"authenticatorAttachment": "cross-platform", "clientExtensionResults": map[string]any{},
		"response": map[string]any{
			"clientDataJSON":    b64.EncodeToString(client),
			"authenticatorData": b64.EncodeToString(auth),
			"signature":         b64.EncodeToString(sig),
			"userHandle":        b64.EncodeToString(a.handle),
		},
	})
}

// PublicKey is the credential's public key (nil before Create).
func (a *Authenticator) PublicKey() *ecdsa.PublicKey {
	if a.key == nil {
		return nil
	}
	return &a.key.PublicKey
}

// Clone returns an authenticator with the same key and counter: a copy of
// the hardware, whose counter will fall behind.
func (a *Authenticator) Clone() *Authenticator {
	c := *a
	return &c
}
