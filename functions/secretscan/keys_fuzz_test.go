package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// keySeeds are PEM texts: GitHub's known-answer key, a fresh P-256 key,
// keys of other kinds and curves, and broken ones.
func keySeeds(f *testing.F) []string {
	pemOf := func(pub any) string {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			f.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	return []string{
		katPublicKey, pemOf(&p256.PublicKey), pemOf(edPub), pemOf(&p384.PublicKey),
		strings.Replace(katPublicKey, "PUBLIC KEY", "EC PUBLIC KEY", 2),
		strings.Replace(katPublicKey, "MFkw", "MFkx", 1),
		"junk\n" + katPublicKey + "trailing", "not pem", "",
	}
}

// parsePublicKey accepts only a PEM "PUBLIC KEY" block holding a P-256
// point that is on the curve, encoded as x509 encodes it; the key it gives
// encodes back to the same block.
func FuzzParsePublicKey(f *testing.F) {
	for _, s := range keySeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		pub, err := parsePublicKey(p)
		if err != nil {
			if pub != nil {
				t.Fatalf("a key with the error %v", err)
			}
			return
		}
		block, _ := pem.Decode([]byte(p))
		if block == nil || block.Type != "PUBLIC KEY" || !strings.Contains(p, "-----BEGIN PUBLIC KEY-----") {
			t.Fatalf("accepted %q, which holds no PEM public key", p)
		}
		if pub.Curve != elliptic.P256() {
			t.Fatalf("accepted a key on %s", pub.Curve.Params().Name)
		}
		if _, err := pub.ECDH(); err != nil {
			t.Fatalf("accepted a point that is not on P-256: %v", err)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(der, block.Bytes) {
			t.Fatalf("accepted a key encoded otherwise than x509 encodes it: %x, canonically %x", block.Bytes, der)
		}
		again, err := parsePublicKey(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
		if err != nil || !again.Equal(pub) {
			t.Fatalf("the key does not read back: %v", err)
		}
	})
}

// parseKeyDocument keeps, by identifier, exactly the entries of the
// document with an identifier and a usable key (the last of an identifier
// named twice), and is an error when none is left or the document does
// not read.
func FuzzParseKeyDocument(f *testing.F) {
	quoted := func(s string) string {
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		return string(b)
	}
	seeds := keySeeds(f)
	var entries []string
	for i, k := range seeds {
		entries = append(entries, `{"key_identifier":"`+string(rune('a'+i))+`","key":`+quoted(k)+`,"is_current":true}`)
	}
	for _, doc := range []string{
		`{"public_keys":[` + strings.Join(entries, ",") + `]}`,
		`{"public_keys":[` + entries[0] + `,{"key_identifier":"","key":` + quoted(katPublicKey) + `}]}`,
		`{"public_keys":[{"key_identifier":"a","key":` + quoted(seeds[1]) + `},{"key_identifier":"a","key":` + quoted(katPublicKey) + `}]}`,
		`{"public_keys":[{"key_identifier":"a","key":` + quoted(katPublicKey) + `,"is_current":"yes"}]}`,
		`{}`, `{"public_keys":[]}`, `[]`, `{"public_keys":[{"key_identifier":"x","key":"junk"}]}`, `null`,
	} {
		f.Add([]byte(doc))
	}
	log := zap.NewNop()
	f.Fuzz(func(t *testing.T, body []byte) {
		keys, err := parseKeyDocument(body, log)
		var doc struct {
			PublicKeys []struct {
				KeyIdentifier string `json:"key_identifier"`
				Key           string `json:"key"`
				IsCurrent     bool   `json:"is_current"`
			} `json:"public_keys"`
		}
		want := map[string]*ecdsa.PublicKey{}
		if json.Unmarshal(body, &doc) == nil {
			for _, e := range doc.PublicKeys {
				if pub, err := parsePublicKey(e.Key); err == nil && e.KeyIdentifier != "" {
					want[e.KeyIdentifier] = pub
				}
			}
		}
		if len(want) == 0 {
			if err == nil || keys != nil {
				t.Fatalf("%q: %d keys (%v), want an error", body, len(keys), err)
			}
			return
		}
		if err != nil || len(keys) != len(want) {
			t.Fatalf("%q: %d keys (%v), want %d", body, len(keys), err, len(want))
		}
		for id, pub := range want {
			if keys[id] == nil || !keys[id].Equal(pub) || keys[id].Curve != elliptic.P256() {
				t.Fatalf("%q: key %q is %v, want %v", body, id, keys[id], pub)
			}
		}
	})
}
