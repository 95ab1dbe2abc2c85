// Package password checks, hashes and verifies customer passwords: bcrypt
// at cost 12, at least 12 characters and at most 72 bytes (bcrypt reads
// only 72, so longer ones are refused rather than silently truncated),
// never a common password, and verification that takes the same time
// whether or not the account exists.
package password

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/text/unicode/norm"
)

// Cost is bcrypt's work factor.
const Cost = 12

// Length bounds: MinLen in characters (Unicode code points once
// composed, NFC), MaxLen in bytes (what bcrypt reads).
const (
	MinLen = 12
	MaxLen = 72
)

// Policy errors; their text is fit to show the user.
var (
	ErrTooShort = fmt.Errorf("the password must be at least %d characters", MinLen)
	ErrTooLong  = fmt.Errorf("the password may be at most %d bytes", MaxLen)
	ErrCommon   = errors.New("that password is too common; choose another")
	ErrEncoding = errors.New("the password must be valid UTF-8")
	ErrMismatch = errors.New("password does not match")
	ErrBusy     = errors.New("too many password checks at once")
)

//go:embed common.txt
var commonText string

var common = func() map[string]bool {
	m := map[string]bool{}
	for _, line := range strings.Split(commonText, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			m[strings.ToLower(line)] = true
		}
	}
	return m
}()

// Check applies the policy to a new password for account email.
func Check(pw, email string) error {
	if !utf8.ValidString(pw) {
		return ErrEncoding
	}
	if len(pw) > MaxLen {
		return ErrTooLong
	}
	// Characters are counted and compared composed (NFC): "e" and a
	// combining accent typed as one letter are one, as the person sees.
	// The password itself is hashed as it came.
	composed := norm.NFC.String(pw)
	if utf8.RuneCountInString(composed) < MinLen {
		return ErrTooShort
	}
	lower := strings.ToLower(composed)
	if common[lower] || oneSymbol(lower) || ascending(lower) {
		return ErrCommon
	}
	if local, _, ok := strings.Cut(strings.ToLower(email), "@"); ok && len(local) >= 4 && strings.Contains(lower, local) {
		return ErrCommon
	}
	return nil
}

// oneSymbol: "aaaaaaaaaaaa", "éééééééééééé".
func oneSymbol(s string) bool {
	_, n := utf8.DecodeRuneInString(s)
	return strings.Count(s, s[:n])*n == len(s)
}

// ascending: "123456789012", "abcdefghijkl" (each byte one more than the
// last, digits wrapping 9 to 0).
func ascending(s string) bool {
	for i := 1; i < len(s); i++ {
		prev, cur := s[i-1], s[i]
		if cur != prev+1 && !(prev == '9' && cur == '0') {
			return false
		}
	}
	return true
}

// Hash returns the bcrypt hash of an acceptable password.
func Hash(pw string) (string, error) {
	if len(pw) > MaxLen {
		return "", ErrTooLong
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), Cost)
	if err != nil {
		return "", fmt.Errorf("password: %w", err)
	}
	return string(h), nil
}

// Verifier compares passwords with bounded concurrency, so a flood of
// sign-in attempts queues instead of starving everything else of CPU.
type Verifier struct {
	slots chan struct{}
	wait  time.Duration
	dummy []byte
}

// NewVerifier allows at most concurrent bcrypt comparisons at once; a
// caller waits up to wait for a slot.
func NewVerifier(concurrent int, wait time.Duration) (*Verifier, error) {
	dummy, err := bcrypt.GenerateFromPassword([]byte("guardian-dummy-password-for-timing"), Cost)
	if err != nil {
		return nil, fmt.Errorf("password: %w", err)
	}
	return &Verifier{slots: make(chan struct{}, max(concurrent, 1)), wait: wait, dummy: dummy}, nil
}

// Verify reports whether pw matches hash. An empty hash (no such account,
// or an account without a password) is compared against a dummy hash, so
// the answer takes as long either way. Passwords over 72 bytes never
// match: bcrypt would compare only their first 72.
func (v *Verifier) Verify(ctx context.Context, hash, pw string) error {
	t := time.NewTimer(v.wait)
	defer t.Stop()
	select {
	case v.slots <- struct{}{}:
	case <-t.C:
		return ErrBusy
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-v.slots }()
	target := []byte(hash)
	known := hash != ""
	if !known {
		target = v.dummy
	}
	candidate := pw
	tooLong := len(pw) > MaxLen
	if tooLong {
		candidate = pw[:MaxLen] // same work as any other attempt
	}
	err := bcrypt.CompareHashAndPassword(target, []byte(candidate))
	ok := subtle.ConstantTimeEq(boolInt(err == nil && known && !tooLong), 1) == 1
	if !ok {
		return ErrMismatch
	}
	return nil
}

func boolInt(b bool) int32 {
	if b {
		return 1
	}
	return 0
}
