package mfa

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// MinSecretLen is the shortest GUARDIAN_MFA_SECRET accepted, in bytes.
const MinSecretLen = 32

// Labels separate the keys derived from the one secret.
const (
	sealLabel     = "guardian/mfa/totp-seed-seal/v1"
	recoveryLabel = "guardian/mfa/recovery-code-hmac/v1"
)

// sealVersion is the first byte of a sealed value: the key and format.
const sealVersion = 1

// errSealed is every failure to open a sealed value; it says nothing of
// the value.
var errSealed = errors.New("mfa: sealed value cannot be opened")

// keys are what the MFA secret is used for.
type keys struct {
	seal     cipher.AEAD
	recovery []byte
}

func derive(secret []byte, label string) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(label))
	return mac.Sum(nil)
}

func newKeys(secret []byte) (*keys, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("mfa: the secret must be at least %d bytes", MinSecretLen)
	}
	block, err := aes.NewCipher(derive(secret, sealLabel))
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &keys{seal: aead, recovery: derive(secret, recoveryLabel)}, nil
}

// sealFor encrypts plain for user: version || nonce || ciphertext+tag,
// with the user id as additional data.
func (k *keys) sealFor(userID string, plain []byte) ([]byte, error) {
	n := k.seal.NonceSize()
	out := make([]byte, 1+n, 1+n+len(plain)+k.seal.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return k.seal.Seal(out, out[1:1+n], plain, []byte("totp:"+userID)), nil
}

// openFor reverses sealFor.
func (k *keys) openFor(userID string, sealed []byte) ([]byte, error) {
	n := k.seal.NonceSize()
	if len(sealed) < 1+n+k.seal.Overhead() || sealed[0] != sealVersion {
		return nil, errSealed
	}
	plain, err := k.seal.Open(nil, sealed[1:1+n], sealed[1+n:], []byte("totp:"+userID))
	if err != nil {
		return nil, errSealed
	}
	return plain, nil
}
