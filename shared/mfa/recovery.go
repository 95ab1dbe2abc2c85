package mfa

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"strings"
)

// RecoveryCodes is how many recovery codes a user gets at a time.
const RecoveryCodes = 10

// recoveryAlphabet is Crockford's base32 in lower case: no i, l, o or u,
// so a code read aloud or copied by hand survives.
const recoveryAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// recoveryLen is a code's length in letters (5 bits each: 50 bits).
const recoveryLen = 10

// newRecoveryCodes returns n fresh codes, written xxxxx-xxxxx.
func newRecoveryCodes(n int) ([]string, error) {
	out := make([]string, n)
	buf := make([]byte, recoveryLen)
	for i := range out {
		if _, err := rand.Read(buf); err != nil {
			return nil, err
		}
		var b strings.Builder
		for j, c := range buf {
			if j == recoveryLen/2 {
				b.WriteByte('-')
			}
			b.WriteByte(recoveryAlphabet[c&31]) // 256 is a multiple of 32: uniform
		}
		out[i] = b.String()
	}
	return out, nil
}

// canonicalRecovery returns the code someone typed in canonical form
// (lower case, no separators, look-alikes mapped as Crockford does), or ""
// if it cannot be a recovery code.
func canonicalRecovery(s string) string {
	s = normalizeCode(s)
	if len(s) != recoveryLen {
		return ""
	}
	b := []byte(s)
	for i, c := range b {
		switch c {
		case 'o':
			c = '0'
		case 'i', 'l':
			c = '1'
		}
		if !strings.ContainsRune(recoveryAlphabet, rune(c)) {
			return ""
		}
		b[i] = c
	}
	return string(b)
}

// hashRecovery is what is stored of a canonical code of user.
func (k *keys) hashRecovery(userID, canonical string) []byte {
	mac := hmac.New(sha256.New, k.recovery)
	mac.Write([]byte(userID))
	mac.Write([]byte{0})
	mac.Write([]byte(canonical))
	return mac.Sum(nil)
}
