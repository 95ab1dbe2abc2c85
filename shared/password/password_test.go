package password

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func TestCheck(t *testing.T) {
	cases := []struct {
		pw   string
		want error
	}{
		{"correct-horse-staple-9", nil},
		{"short", ErrTooShort},
		{strings.Repeat("x", 11), ErrTooShort},
		{strings.Repeat("xy", 37), ErrTooLong},
		{"Password1234", ErrCommon},
		{"QWERTYUIOPAS", ErrCommon},
		{"zzzzzzzzzzzzz", ErrCommon},
		{"3456789012345", ErrCommon},
		{"alice.smith-2026!", ErrCommon}, // contains the e-mail's local part
		{"\xff\xfe" + strings.Repeat("a", 12), ErrEncoding},
		{strings.Repeat("é", 11), ErrTooShort}, // 22 bytes, 11 characters
		{strings.Repeat("é", 12), ErrCommon},   // one symbol, in two bytes
		{strings.Repeat("日本", 6) + "x", nil},   // 13 characters in 37 bytes
		{"éa" + strings.Repeat("é", 10), nil},
	}
	for _, tc := range cases {
		if got := Check(tc.pw, "alice.smith@example.com"); !errors.Is(got, tc.want) {
			t.Errorf("Check(%q) = %v, want %v", tc.pw, got, tc.want)
		}
	}
	if err := Check(strings.Repeat("ab", 36), "x@example.com"); err != nil {
		t.Errorf("a 72-byte password refused: %v", err)
	}
}

func TestVerify(t *testing.T) {
	v, err := NewVerifier(2, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pw := "correct-horse-staple-9"
	h, err := Hash(pw)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$2a$12$") {
		t.Fatalf("hash %q is not bcrypt cost 12", h)
	}
	ctx := context.Background()
	if err := v.Verify(ctx, h, pw); err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(ctx, h, pw+"x"); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong password: %v", err)
	}
	if err := v.Verify(ctx, "", pw); !errors.Is(err, ErrMismatch) {
		t.Fatalf("unknown account: %v", err)
	}
	// bcrypt ignores bytes past 72: a 72-byte password plus anything must
	// not match.
	long := strings.Repeat("k", 72)
	lh, err := Hash(long)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(ctx, lh, long); err != nil {
		t.Fatalf("the 72-byte password itself: %v", err)
	}
	if err := v.Verify(ctx, lh, long+"anything"); !errors.Is(err, ErrMismatch) {
		t.Fatalf("truncation accepted: %v", err)
	}
	if _, err := Hash(long + "x"); !errors.Is(err, ErrTooLong) {
		t.Fatal("hashing a 73-byte password")
	}
}

func TestVerifierBoundsConcurrency(t *testing.T) {
	v, err := NewVerifier(1, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := Hash("correct-horse-staple-9")
	var wg sync.WaitGroup
	busy := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			busy <- v.Verify(context.Background(), h, "correct-horse-staple-9")
		}()
	}
	wg.Wait()
	close(busy)
	var refused int
	for err := range busy {
		if errors.Is(err, ErrBusy) {
			refused++
		}
	}
	// One slot, ~230 ms per check, 50 ms patience: most are turned away.
	if refused == 0 {
		t.Fatal("no caller was turned away with one slot")
	}
}

// Check never accepts what its policy refuses, whatever the input.
func FuzzCheck(f *testing.F) {
	f.Add("correct-horse-staple-9", "alice@example.com")
	f.Add(strings.Repeat("é", 12), "x@y")
	f.Add("\xff"+strings.Repeat("a", 12), "")
	f.Add("AbCdEfGhIjKlM", "abcdefgh@example.com")
	f.Fuzz(func(t *testing.T, pw, email string) {
		err := Check(pw, email)
		if err != nil {
			for _, known := range []error{ErrEncoding, ErrTooShort, ErrTooLong, ErrCommon} {
				if err == known {
					return
				}
			}
			t.Fatalf("Check(%q) = %v, not one of the policy's errors", pw, err)
		}
		lower := strings.ToLower(pw)
		local, _, _ := strings.Cut(strings.ToLower(email), "@")
		switch {
		case !utf8.ValidString(pw):
			t.Fatalf("%q accepted: not UTF-8", pw)
		case utf8.RuneCountInString(pw) < MinLen || len(pw) > MaxLen:
			t.Fatalf("%q accepted: %d characters, %d bytes", pw, utf8.RuneCountInString(pw), len(pw))
		case common[lower]:
			t.Fatalf("%q accepted: a common password", pw)
		case strings.Count(lower, lower[:utf8.RuneLen([]rune(lower)[0])]) == utf8.RuneCountInString(lower):
			t.Fatalf("%q accepted: one symbol repeated", pw)
		case strings.Contains(email, "@") && len(local) >= 4 && strings.Contains(lower, local):
			t.Fatalf("%q accepted: holds the e-mail's local part %q", pw, local)
		}
	})
}
