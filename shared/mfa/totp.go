package mfa

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"image/png"
	"regexp"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
	"github.com/pquerna/otp/totp"
)

// TOTP parameters (RFC 6238 defaults, what every authenticator app takes).
const (
	Period   = 30 * time.Second
	Digits   = 6
	SeedSize = 20 // bytes: 160 bits, RFC 4226's recommendation
	// Skew is how many steps either side of the current one are accepted.
	Skew = 1
)

var codeRE = regexp.MustCompile(`^[0-9]{6}$`)

// seedEncoding is how seeds are written in otpauth:// URLs and shown.
var seedEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newSeed returns a fresh seed in base32 (what pquerna/otp and apps use).
func newSeed() (string, error) {
	b := make([]byte, SeedSize)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return seedEncoding.EncodeToString(b), nil
}

// keyOf is the otp.Key of seed for the app: its otpauth:// URL and QR code.
func keyOf(issuer, account, seed string) (*otp.Key, error) {
	raw, err := seedEncoding.DecodeString(seed)
	if err != nil {
		return nil, errSealed
	}
	return totp.Generate(totp.GenerateOpts{
		Issuer: issuer, AccountName: account, Secret: raw, SecretSize: SeedSize,
		Period: uint(Period / time.Second), Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, Rand: rand.Reader,
	})
}

// qrPNG renders key's QR code.
func qrPNG(key *otp.Key) ([]byte, error) {
	img, err := key.Image(256, 256)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// StepAt is the RFC 6238 time step of t.
func StepAt(t time.Time) int64 { return t.Unix() / int64(Period/time.Second) }

// CodeAt is seed's code for the step of t (for tests and tools: the
// product only verifies codes).
func CodeAt(seed string, t time.Time) (string, error) {
	return codeForStep(seed, StepAt(t))
}

func codeForStep(seed string, step int64) (string, error) {
	return hotp.GenerateCodeCustom(seed, uint64(step), hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
}

// matchTOTP returns the step whose code code is, within Skew steps of
// now's, or false. Every candidate is computed and compared in constant
// time, so the answer takes as long whichever matched.
func matchTOTP(seed, code string, now time.Time) (int64, bool) {
	if !codeRE.MatchString(code) {
		return 0, false
	}
	cur := StepAt(now)
	var step int64
	found := 0
	for s := cur - Skew; s <= cur+Skew; s++ {
		want, err := codeForStep(seed, s)
		if err != nil {
			return 0, false
		}
		eq := subtle.ConstantTimeCompare([]byte(want), []byte(code))
		// Keep the first (oldest) matching step without branching on it.
		take := eq & (1 - found)
		step = int64(subtle.ConstantTimeSelect(take, int(s), int(step)))
		found |= eq
	}
	return step, found == 1
}

// normalizeCode strips what people type around a code: spaces and hyphens.
func normalizeCode(s string) string {
	return strings.ToLower(strings.NewReplacer(" ", "", "-", "", "\t", "").Replace(strings.TrimSpace(s)))
}
