package mfa

import (
	"strings"
	"testing"
	"time"
)

// Whatever is typed, canonicalRecovery gives "" or a code of the
// alphabet's recoveryLen characters; a code we issued, typed in any case,
// with spaces or hyphens anywhere and look-alikes (o, i, l) for 0 and 1,
// comes back as itself.
func FuzzCanonicalRecovery(f *testing.F) {
	f.Add("0123456789", "abcde-fghjk", uint8(0))
	f.Add("  0o1I l ", "zzzzz-zzzzz", uint8(3))
	f.Add("\u212aey", "kkkkk-kkkkk", uint8(1))
	f.Fuzz(func(t *testing.T, typed, issued string, style uint8) {
		if got := canonicalRecovery(typed); got != "" {
			if len(got) != recoveryLen || strings.Trim(got, recoveryAlphabet) != "" {
				t.Fatalf("canonicalRecovery(%q) = %q, not a code", typed, got)
			}
		}
		// An issued code: recoveryLen characters of the alphabet, shown
		// with a hyphen in the middle.
		code := strings.ReplaceAll(issued, "-", "")
		if len(code) != recoveryLen || strings.Trim(code, recoveryAlphabet) != "" {
			return
		}
		shown := code[:recoveryLen/2] + "-" + code[recoveryLen/2:]
		switch style % 4 {
		case 1:
			shown = strings.ToUpper(shown)
		case 2:
			shown = " " + strings.ReplaceAll(shown, "-", " - ") + "\t"
		case 3:
			shown = strings.NewReplacer("0", "O", "1", "l").Replace(shown)
		}
		if got := canonicalRecovery(shown); got != code {
			t.Fatalf("issued %q typed as %q reads %q", code, shown, got)
		}
	})
}

// matchTOTP accepts exactly the codes of the steps within Skew of now's,
// and says which step it was.
func FuzzMatchTOTP(f *testing.F) {
	f.Add(int64(1796000000), int8(0), "000000")
	f.Add(int64(1796000000), int8(1), "")
	f.Add(int64(0), int8(-2), "12345")
	f.Fuzz(func(t *testing.T, at int64, off int8, other string) {
		if at < 0 || at > 1<<40 {
			return
		}
		const seed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
		now := time.Unix(at, 0)
		step := StepAt(now) + int64(off%4)
		code, err := codeForStep(seed, step)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := matchTOTP(seed, code, now)
		within := off%4 >= -Skew && off%4 <= Skew
		if ok != within || ok && got > step {
			t.Fatalf("code of step %d at step %d: matched %v (step %d), want %v", step, StepAt(now), ok, got, within)
		}
		if ok {
			if want, _ := codeForStep(seed, got); want != code {
				t.Fatalf("matched step %d, whose code is not %q", got, code)
			}
		}
		if _, ok := matchTOTP(seed, other, now); ok {
			matched := false
			for s := StepAt(now) - Skew; s <= StepAt(now)+Skew; s++ {
				c, _ := codeForStep(seed, s)
				matched = matched || c == other
			}
			if !matched {
				t.Fatalf("%q matched, the code of no step within Skew", other)
			}
		}
	})
}
