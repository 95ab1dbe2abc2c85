package password

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
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
