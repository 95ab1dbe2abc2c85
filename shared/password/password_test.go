package password

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
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
		{strings.Repeat("e\u0301", 6) + "abcde", ErrTooShort}, // 11 letters, six of them typed as two code points
		{strings.Repeat("e\u0301", 12), ErrCommon},            // one letter repeated, decomposed
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

// Check refuses exactly what its policy refuses, whatever the input.
func FuzzCheck(f *testing.F) {
	f.Add("correct-horse-staple-9", "alice@example.com")
	f.Add(strings.Repeat("é", 12), "x@y")
	f.Add(strings.Repeat("e\u0301", 12), "x@y")
	f.Add("\xff"+strings.Repeat("a", 12), "")
	f.Add("AbCdEfGhIjKlM", "abcdefgh@example.com")
	f.Add("3456789012345", "")
	f.Fuzz(func(t *testing.T, pw, email string) {
		got := Check(pw, email)
		want := policy(pw, email)
		if got != want {
			t.Fatalf("Check(%q, %q) = %v, want %v", pw, email, got, want)
		}
	})
}

// policy is Check's policy written out plainly, rule by rule.
func policy(pw, email string) error {
	if !utf8.ValidString(pw) {
		return ErrEncoding
	}
	if len(pw) > MaxLen {
		return ErrTooLong
	}
	chars := []rune(norm.NFC.String(pw))
	if len(chars) < MinLen {
		return ErrTooShort
	}
	lower := []rune(strings.ToLower(string(chars)))
	same, step := true, true
	for i := 1; i < len(lower); i++ {
		same = same && lower[i] == lower[0]
		prev, cur := string(lower[i-1]), string(lower[i])
		// One byte more each, digits wrapping 9 to 0 (ASCII: one byte
		// per character; others never step).
		step = step && len(prev) == 1 && len(cur) == 1 && (cur[0] == prev[0]+1 || prev == "9" && cur == "0")
	}
	local, _, hasAt := strings.Cut(strings.ToLower(email), "@")
	if common[string(lower)] || same || step || hasAt && len(local) >= 4 && strings.Contains(string(lower), local) {
		return ErrCommon
	}
	return nil
}
