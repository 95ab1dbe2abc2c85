package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"math/big"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

func pemKey(t testing.TB, p string) *ecdsa.PublicKey {
	t.Helper()
	k, err := parsePublicKey(p)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKnownAnswerVectors(t *testing.T) {
	cases := []struct {
		name, key, payload, sig string
	}{
		{"our fixed key pair and signature", katPublicKey, katPayload, katSignature},
		{"GitHub's published example", ghExampleKey, ghExamplePayload, ghExampleSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pub := pemKey(t, tc.key)
			if err := verifySignature(pub, []byte(tc.payload), tc.sig); err != nil {
				t.Fatalf("the vector does not verify: %v", err)
			}
			// One changed byte anywhere in the body breaks it.
			for _, i := range []int{0, len(tc.payload) / 2, len(tc.payload) - 1} {
				b := []byte(tc.payload)
				b[i] ^= 1
				if err := verifySignature(pub, b, tc.sig); !errors.Is(err, errSigInvalid) {
					t.Fatalf("byte %d changed: %v", i, err)
				}
			}
			// Re-serialised JSON is not the raw body: it does not verify.
			if err := verifySignature(pub, []byte(tc.payload+"\n"), tc.sig); err == nil {
				t.Fatal("a body with a trailing newline verified")
			}
		})
	}
	// The private half in the tests matches the fixed public key.
	if !katKey(t).PublicKey.Equal(pemKey(t, katPublicKey)) {
		t.Fatal("katPrivateKey is not katPublicKey's pair")
	}
}

func der(r, s *big.Int, mutate func(*cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(r)
		b.AddASN1BigInt(s)
		if mutate != nil {
			mutate(b)
		}
	})
	return b.BytesOrPanic()
}

func TestSignatureParsingIsStrict(t *testing.T) {
	pub := pemKey(t, katPublicKey)
	good, _ := base64.StdEncoding.DecodeString(katSignature)
	r, s, err := parseSignature(katSignature)
	if err != nil {
		t.Fatal(err)
	}
	n := elliptic.P256().Params().N
	raw := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	// 0x02 0x21 0x00 0x01...: an INTEGER with a needless leading zero.
	nonMinimal := []byte{0x30, 0x26, 0x02, 0x21, 0x00}
	nonMinimal = append(nonMinimal, r.FillBytes(make([]byte, 32))...)
	nonMinimal[5] = 0x01 // keep the top bit clear so the zero is truly needless
	nonMinimal = append(nonMinimal, 0x02, 0x01, 0x01)
	longForm := append([]byte{0x30, 0x81, good[1]}, good[2:]...)
	std := base64.StdEncoding.EncodeToString
	cases := []struct {
		name, header string
		want         error
	}{
		{"the URL-safe alphabet is refused", strings.NewReplacer("+", "-", "/", "_").Replace(katSignature), errSigEncoding},
		{"missing padding is refused", strings.TrimRight(katSignature, "="), errSigEncoding},
		{"a raw r||s signature is refused", std(raw), errSigDER},
		{"raw r||s in URL-safe base64 is refused", base64.RawURLEncoding.EncodeToString(raw), errSigEncoding},
		{"trailing bytes after the DER are refused", std(append(append([]byte{}, good...), 0)), errSigDER},
		{"a third integer is refused", std(der(big.NewInt(7), big.NewInt(9), func(b *cryptobyte.Builder) { b.AddASN1Int64(1) })), errSigDER},
		{"a non-minimal integer is refused", std(nonMinimal), errSigDER},
		{"a long-form length is refused", std(longForm), errSigDER},
		{"r = 0 is refused", std(der(big.NewInt(0), s, nil)), errSigDER},
		{"a negative s is refused", std(der(r, big.NewInt(-5), nil)), errSigDER},
		{"r = N is refused", std(der(n, s, nil)), errSigDER},
		{"an empty header is refused", "", errSigEncoding},
		{"an overlong header is refused", strings.Repeat("A", 100), errSigEncoding},
		{"not base64 at all", "not a signature!", errSigEncoding},
		{"a well-formed signature of other bytes does not verify", std(der(s, r, nil)), errSigInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := verifySignature(pub, []byte(katPayload), tc.header); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzParseSignature(f *testing.F) {
	f.Add(katSignature)
	f.Add(ghExampleSignature)
	f.Add(strings.NewReplacer("+", "-", "/", "_").Replace(katSignature))
	f.Add("MAYCAQECAQE=") // SEQUENCE { 1, 1 }
	f.Add("")
	f.Fuzz(func(t *testing.T, header string) {
		r, s, err := parseSignature(header)
		if err != nil {
			if r != nil || s != nil {
				t.Fatal("values returned with an error")
			}
			return
		}
		n := elliptic.P256().Params().N
		if r.Sign() <= 0 || s.Sign() <= 0 || r.Cmp(n) >= 0 || s.Cmp(n) >= 0 {
			t.Fatalf("accepted out-of-range r, s from %q", header)
		}
		// Whatever is accepted is canonical: re-encoding gives the header back.
		if again := base64.StdEncoding.EncodeToString(der(r, s, nil)); again != header {
			t.Fatalf("accepted a non-canonical signature %q (canonical %q)", header, again)
		}
	})
}

// verifySignature accepts GitHub's signature of exactly the bytes signed,
// under the key that signed them: the fuzzer picks the body, a body bit
// and a signature bit to flip, and each flip, or another key, must fail.
func FuzzVerifySignature(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(katPayload), uint16(3), uint16(9))
	f.Add([]byte(`[]`), uint16(0), uint16(0))
	f.Add([]byte{}, uint16(1), uint16(70))
	f.Fuzz(func(t *testing.T, body []byte, bodyBit, sigBit uint16) {
		digest := sha256.Sum256(body)
		sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		header := base64.StdEncoding.EncodeToString(sig)
		if err := verifySignature(&key.PublicKey, body, header); err != nil {
			t.Fatalf("a signature of %q does not verify: %v", body, err)
		}
		if err := verifySignature(&other.PublicKey, body, header); err == nil {
			t.Fatal("verified under another key")
		}
		if len(body) > 0 {
			changed := bytes.Clone(body)
			changed[int(bodyBit/8)%len(changed)] ^= 1 << (bodyBit % 8)
			if err := verifySignature(&key.PublicKey, changed, header); err == nil {
				t.Fatalf("the signature of %q verified %q", body, changed)
			}
		}
		bad := bytes.Clone(sig)
		bad[int(sigBit/8)%len(bad)] ^= 1 << (sigBit % 8)
		if err := verifySignature(&key.PublicKey, body, base64.StdEncoding.EncodeToString(bad)); err == nil {
			t.Fatalf("a signature with bit %d flipped verified", sigBit)
		}
	})
}
