package mfa

import (
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/mfa/mfatest"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// The RFC 6238 appendix B vectors (SHA-1), last six digits.
func TestCodesMatchRFC6238(t *testing.T) {
	seed := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte("12345678901234567890"))
	for _, tc := range []struct {
		unix int64
		code string
	}{{59, "287082"}, {1111111109, "081804"}, {1111111111, "050471"}, {1234567890, "005924"}, {2000000000, "279037"}, {20000000000, "353130"}} {
		if got, err := CodeAt(seed, time.Unix(tc.unix, 0)); err != nil || got != tc.code {
			t.Errorf("T=%d: %q %v, want %q", tc.unix, got, err, tc.code)
		}
	}
}

func TestCodesOfTheNeighbouringStepsOnlyAreAccepted(t *testing.T) {
	seed, _ := newSeed()
	now := time.Date(2026, 11, 3, 10, 0, 15, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		shift int64
		ok    bool
	}{{"two steps early", -2, false}, {"one step early", -1, true}, {"current", 0, true}, {"one step late", 1, true}, {"two steps late", 2, false}} {
		code, _ := codeForStep(seed, StepAt(now)+tc.shift)
		step, ok := matchTOTP(seed, code, now)
		if ok != tc.ok || (ok && step != StepAt(now)+tc.shift) {
			t.Errorf("%s: step %d ok %v", tc.name, step, ok)
		}
	}
	for _, bad := range []string{"", "12345", "1234567", "abcdef", " 12345"} {
		if _, ok := matchTOTP(seed, bad, now); ok {
			t.Errorf("%q matched", bad)
		}
	}
}

func TestSealedSeedsOpenOnlyForTheirUserAndKey(t *testing.T) {
	k, err := newKeys([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := k.sealFor("user-a", []byte("JBSWY3DPEHPK3PXP"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sealed), "JBSWY3DP") {
		t.Fatal("the seed is readable in its sealed form")
	}
	if got, err := k.openFor("user-a", sealed); err != nil || string(got) != "JBSWY3DPEHPK3PXP" {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := k.openFor("user-b", sealed); !errors.Is(err, errSealed) {
		t.Fatal("a seed copied to another user opens")
	}
	other, _ := newKeys([]byte(strings.Repeat("o", 32)))
	if _, err := other.openFor("user-a", sealed); !errors.Is(err, errSealed) {
		t.Fatal("a seed opens under another secret")
	}
	if _, err := newKeys([]byte("short")); err == nil {
		t.Fatal("a short secret was accepted")
	}
}

func TestRecoveryCodesAreFreshAndForgiving(t *testing.T) {
	codes, err := newRecoveryCodes(RecoveryCodes)
	if err != nil || len(codes) != RecoveryCodes {
		t.Fatal(codes, err)
	}
	seen := map[string]bool{}
	for _, c := range codes {
		if len(c) != 11 || c[5] != '-' || seen[c] || canonicalRecovery(c) == "" {
			t.Fatalf("bad or repeated code %q", c)
		}
		seen[c] = true
	}
	c := codes[0]
	typed := strings.ToUpper(strings.ReplaceAll(c, "-", " "))
	if canonicalRecovery(typed) != canonicalRecovery(c) {
		t.Fatal("upper case and spaces are not forgiven")
	}
	if canonicalRecovery("0o1il-xxxxx") != canonicalRecovery("00111-xxxxx") {
		t.Fatal("look-alikes are not mapped")
	}
	if canonicalRecovery("123456") != "" || canonicalRecovery("uuuuu-uuuuu") != "" {
		t.Fatal("not a recovery code, yet canonical")
	}
}

// fixture is a Service on a test database, connected as the runtime role
// (so the migration's grants are proven too), with a clock the test moves.
type fixture struct {
	s    *Service
	pg   *testenv.PG
	c    *testenv.Customer
	mu   sync.Mutex
	now  time.Time
	auth *mfatest.Authenticator
}

const origin = "http://localhost:8443"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pg := testenv.Postgres(t)
	// The owner: the store serves two functions, each with a role of its
	// own (enrolment functions/mfa, sign-in functions/auth), whose grants
	// migrate's TestEachFunctionRoleReachesOnlyItsTables holds.
	app := pg.Owner
	var err error
	f := &fixture{pg: pg, now: time.Date(2026, 11, 3, 10, 0, 5, 0, time.UTC), auth: mfatest.New(origin)}
	f.c = testenv.NewCustomer(t, pg.Owner, []byte(strings.Repeat("p", 32)), []byte(strings.Repeat("s", 32)))
	f.s, err = New(app, Config{Secret: []byte(strings.Repeat("m", 32)), PublicURL: origin, Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	if f.s.WebAuthnOff() != nil {
		t.Fatal(f.s.WebAuthnOff())
	}
	return f
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// challenge starts a sign-in of the customer's user waiting for its second
// factor.
func (f *fixture) challenge(t *testing.T) Challenge {
	t.Helper()
	return f.load(t, f.newChallenge(t))
}

func (f *fixture) newChallenge(t *testing.T) string {
	t.Helper()
	token, _, err := NewChallenge(context.Background(), f.s.db, Challenge{UserID: f.c.UserID, CustomerID: f.c.ID, Purpose: PurposeLogin, Method: MethodPassword, Reauthed: true}, f.clock())
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func (f *fixture) load(t *testing.T, token string) Challenge {
	t.Helper()
	c, err := f.s.Challenge(context.Background(), token, PurposeLogin, "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) complete(c Challenge, p Proof) (string, error) {
	return f.s.Complete(context.Background(), c, p, "192.0.2.7", func(pgx.Tx) error { return nil })
}

// wrong returns a code that is not code.
func wrong(code string) string {
	b := []byte(code)
	b[0] = '0' + (b[0]-'0'+1)%10
	return string(b)
}

// notACode returns six digits that are no code of seed near now.
func notACode(seed string, now time.Time) string {
	for n := 0; ; n++ {
		c := fmt.Sprintf("%06d", n)
		if _, ok := matchTOTP(seed, c, now); !ok {
			return c
		}
	}
}

func reason(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

// enrolTOTP enrols and confirms an authenticator app, returning its seed
// and the recovery codes.
func (f *fixture) enrolTOTP(t *testing.T) (string, []string) {
	t.Helper()
	ctx := context.Background()
	e, err := f.s.BeginTOTP(ctx, f.c.UserID, "a@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.URL, "otpauth://totp/Guardian:a@example.com?") || !strings.Contains(e.URL, "secret="+e.Secret) {
		t.Fatalf("otpauth URL %q", e.URL)
	}
	png, err := f.s.TOTPQRCode(ctx, f.c.UserID, "a@example.com")
	if err != nil || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Fatalf("QR code: %v", err)
	}
	code, _ := CodeAt(e.Secret, f.clock())
	if _, err := f.s.ConfirmTOTP(ctx, f.c.UserID, wrong(code), "", ""); reason(err) != "wrong_code" {
		t.Fatalf("wrong code confirmed: %v", err)
	}
	first, err := f.s.ConfirmTOTP(ctx, f.c.UserID, code, "", "")
	if err != nil || first == nil || len(first.RecoveryCodes) != RecoveryCodes {
		t.Fatalf("confirm: %+v %v", first, err)
	}
	codes := first.RecoveryCodes
	if _, err := f.s.TOTPQRCode(ctx, f.c.UserID, "a@example.com"); !errors.Is(err, ErrNoEnrolment) {
		t.Fatal("the QR code of a confirmed app is still served")
	}
	if _, err := f.s.BeginTOTP(ctx, f.c.UserID, "a@example.com"); !errors.Is(err, ErrEnrolled) {
		t.Fatal("a second app replaced the first without removing it")
	}
	return e.Secret, codes
}

func TestTOTPCodesWorkOnceWithinTheWindow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	seed, _ := f.enrolTOTP(t)
	var sealed []byte
	if err := f.pg.Owner.QueryRow(ctx, "SELECT secret_sealed FROM mfa_totp WHERE user_id = $1", f.c.UserID).Scan(&sealed); err != nil || strings.Contains(string(sealed), seed) {
		t.Fatalf("the seed is stored in the clear (%v)", err)
	}

	// The confirming code's step is used: its code does not sign in.
	code, _ := CodeAt(seed, f.clock())
	if _, err := f.complete(f.challenge(t), Proof{Code: code}); reason(err) != "replayed_code" {
		t.Fatalf("the confirming code signed in: %v", err)
	}
	// 30 s later the new code works, once, also written with a space.
	f.advance(Period)
	code, _ = CodeAt(seed, f.clock())
	if kind, err := f.complete(f.challenge(t), Proof{Code: code[:3] + " " + code[3:]}); err != nil || kind != KindTOTP {
		t.Fatalf("current code: %s %v", kind, err)
	}
	if _, err := f.complete(f.challenge(t), Proof{Code: code}); reason(err) != "replayed_code" {
		t.Fatalf("a code worked twice: %v", err)
	}
	// The next step's code (a fast phone clock) works, then an older one
	// does not.
	next, _ := CodeAt(seed, f.clock().Add(Period))
	if _, err := f.complete(f.challenge(t), Proof{Code: next}); err != nil {
		t.Fatalf("next step's code: %v", err)
	}
	f.advance(Period)
	prev, _ := CodeAt(seed, f.clock().Add(-Period))
	if _, err := f.complete(f.challenge(t), Proof{Code: prev}); reason(err) == "" {
		t.Fatal("a code older than the last accepted one worked")
	}
	// Two steps away is out of the window.
	f.advance(3 * Period)
	stale, _ := CodeAt(seed, f.clock().Add(-2*Period))
	if _, err := f.complete(f.challenge(t), Proof{Code: stale}); reason(err) != "wrong_code" {
		t.Fatalf("a code two steps old: %v", err)
	}
}

func TestAChallengeIsSingleUseEvenWhenRaced(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, codes := f.enrolTOTP(t)
	c := f.challenge(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Four different valid recovery codes, one challenge.
			if _, err := f.complete(c, Proof{Code: codes[i]}); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, ErrChallenge) {
				t.Errorf("racing completion: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d completions of one challenge", wins)
	}
	ctx := context.Background()
	if _, err := f.s.Challenge(ctx, "x", PurposeLogin, ""); !errors.Is(err, ErrChallenge) {
		t.Fatal("a malformed token was accepted")
	}
	// Purpose, session binding and expiry.
	sid, _ := f.c.Session(t)
	token, _, err := NewChallenge(ctx, f.s.db, Challenge{UserID: f.c.UserID, CustomerID: f.c.ID, Purpose: PurposeReauth, SessionID: sid}, f.clock())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.Challenge(ctx, token, PurposeLogin, ""); !errors.Is(err, ErrChallenge) {
		t.Fatal("a reauth challenge completed a sign-in")
	}
	other, _ := f.c.Session(t)
	if _, err := f.s.Challenge(ctx, token, PurposeReauth, other); !errors.Is(err, ErrChallenge) {
		t.Fatal("a reauth challenge of one session served another")
	}
	if _, err := f.s.Challenge(ctx, token, PurposeReauth, sid); err != nil {
		t.Fatal(err)
	}
	f.advance(ChallengeTTL + time.Second)
	if _, err := f.s.Challenge(ctx, token, PurposeReauth, sid); !errors.Is(err, ErrChallenge) {
		t.Fatal("an expired challenge was accepted")
	}
}

func TestRecoveryCodesWorkOnceAndGoWithTheLastFactor(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	_, codes := f.enrolTOTP(t)
	if kind, err := f.complete(f.challenge(t), Proof{Code: strings.ToUpper(codes[3])}); err != nil || kind != KindRecovery {
		t.Fatalf("recovery code: %s %v", kind, err)
	}
	if _, err := f.complete(f.challenge(t), Proof{Code: codes[3]}); reason(err) != "wrong_recovery_code" {
		t.Fatalf("a recovery code worked twice: %v", err)
	}
	if st, _ := f.s.StatusOf(ctx, f.c.UserID); st.RecoveryCodesLeft != RecoveryCodes-1 || !st.TOTP.Enabled {
		t.Fatalf("status %+v", st)
	}
	fresh, err := f.s.NewRecoveryCodes(ctx, f.c.UserID, "")
	if err != nil || len(fresh) != RecoveryCodes {
		t.Fatal(err)
	}
	if _, err := f.complete(f.challenge(t), Proof{Code: codes[4]}); reason(err) != "wrong_recovery_code" {
		t.Fatal("an old code works after new ones were made")
	}
	if removed, err := f.s.RemoveTOTP(ctx, f.c.UserID, ""); err != nil || !removed {
		t.Fatal(removed, err)
	}
	if fac, _ := Enrolled(ctx, f.s.db, f.c.UserID); fac.Any() || fac.RecoveryCodes != 0 || len(fac.Methods()) != 0 {
		t.Fatalf("after removing the last factor: %+v", fac)
	}
	if _, err := f.s.NewRecoveryCodes(ctx, f.c.UserID, ""); !errors.Is(err, ErrNotEnrolled) {
		t.Fatal("recovery codes without a factor")
	}
}

func TestAttemptsAreLimitedPerUserAndPerAddress(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	seed, _ := f.enrolTOTP(t)
	if _, err := f.pg.Owner.Exec(ctx, "DELETE FROM mfa_attempts"); err != nil { // the enrolment's wrong code
		t.Fatal(err)
	}
	f.advance(Period)
	for i := range DefaultLimits.PerUser {
		if _, err := f.complete(f.challenge(t), Proof{Code: notACode(seed, f.clock())}); reason(err) != "wrong_code" {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if err := f.s.Locked(ctx, f.c.UserID); err == nil {
		t.Fatal("not locked after the limit")
	}
	good, _ := CodeAt(seed, f.clock())
	_, err := f.complete(f.challenge(t), Proof{Code: good})
	var locked *LockedError
	if !errors.As(err, &locked) || locked.RetryAfter(f.clock()) > int(DefaultLimits.Window.Seconds()) {
		t.Fatalf("the right code over the limit: %v", err)
	}
	// The window passes: the right code works again.
	f.advance(DefaultLimits.Window)
	if err := f.s.Locked(ctx, f.c.UserID); err != nil {
		t.Fatal("still locked after the window")
	}
	good, _ = CodeAt(seed, f.clock())
	if _, err := f.complete(f.challenge(t), Proof{Code: good}); err != nil {
		t.Fatalf("after the window: %v", err)
	}

	// One address guessing for many users is stopped too.
	other := testenv.NewCustomer(t, f.pg.Owner, f.c.Pepper, f.c.Secret)
	g := &fixture{s: f.s, pg: f.pg, c: other, now: f.now}
	g.enrolTOTP(t)
	ip := "198.51.100.9"
	n := 0
	for ; n < 3*DefaultLimits.PerIP; n++ {
		target := f
		if n%2 == 1 {
			target = g
		}
		_, err := f.s.Complete(ctx, target.challenge(t), Proof{Code: "zzzzz-zzzzz"}, ip, func(pgx.Tx) error { return nil })
		if errors.As(err, &locked) {
			break
		}
		// Keep each user under its own limit.
		_, _ = f.pg.Owner.Exec(ctx, "UPDATE mfa_attempts SET attempts = 0 WHERE scope = 'user'")
	}
	if n != DefaultLimits.PerIP {
		t.Fatalf("the address was stopped after %d attempts, want %d", n, DefaultLimits.PerIP)
	}
}

func TestWebAuthnRegistrationAndAssertion(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	sid, _ := f.c.Session(t)
	reg, err := f.s.BeginRegistration(ctx, f.c.UserID, f.c.ID, sid)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.auth.Create(reg.Options)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.s.FinishRegistration(ctx, f.c.UserID, "another-session", reg.Ceremony, "desk key", resp); !errors.Is(err, ErrChallenge) {
		t.Fatal("another session finished the registration")
	}
	cred, first, err := f.s.FinishRegistration(ctx, f.c.UserID, sid, reg.Ceremony, "desk key", resp)
	if err != nil || cred.Name != "desk key" || first == nil || len(first.RecoveryCodes) != RecoveryCodes {
		t.Fatalf("finish: %+v %+v %v", cred, first, err)
	}
	if _, _, err := f.s.FinishRegistration(ctx, f.c.UserID, sid, reg.Ceremony, "again", resp); !errors.Is(err, ErrChallenge) {
		t.Fatal("a registration ceremony was used twice")
	}
	// The same authenticator again is excluded; a second one is welcome.
	reg2, _ := f.s.BeginRegistration(ctx, f.c.UserID, f.c.ID, sid)
	if _, err := f.auth.Create(reg2.Options); err == nil {
		t.Fatal("the registered authenticator was not excluded")
	}
	second := mfatest.New(origin)
	resp2, _ := second.Create(reg2.Options)
	// With a factor now, the session must have used it to add another (as
	// the step-up check asks; the service checks it again under its lock).
	if _, _, err := f.s.FinishRegistration(ctx, f.c.UserID, sid, reg2.Ceremony, "phone", resp2); !errors.Is(err, ErrStepUpLost) {
		t.Fatalf("a session without the factor added a second one: %v", err)
	}
	if _, err := f.pg.Owner.Exec(ctx, "UPDATE sessions SET aal = 2 WHERE id = $1", sid); err != nil {
		t.Fatal(err)
	}
	reg2, _ = f.s.BeginRegistration(ctx, f.c.UserID, f.c.ID, sid)
	resp2, _ = second.Create(reg2.Options)
	if _, first, err := f.s.FinishRegistration(ctx, f.c.UserID, sid, reg2.Ceremony, "phone", resp2); err != nil || first != nil {
		t.Fatalf("second key: %v (%+v: only the first factor makes codes)", err, first)
	}

	assert := func(a *mfatest.Authenticator) (string, error) {
		token := f.newChallenge(t)
		opts, err := f.s.LoginOptions(ctx, f.load(t, token))
		if err != nil {
			t.Fatal(err)
		}
		ans, err := a.Get(opts)
		if err != nil {
			return "", err
		}
		// The challenge as stored now, with its ceremony.
		return f.complete(f.load(t, token), Proof{Assertion: ans})
	}
	if kind, err := assert(f.auth); err != nil || kind != KindWebAuthn {
		t.Fatalf("assertion: %s %v", kind, err)
	}
	clone := f.auth.Clone()
	if _, err := assert(f.auth); err != nil {
		t.Fatalf("second assertion: %v", err)
	}
	if _, err := assert(clone); reason(err) != "webauthn_failed" {
		t.Fatalf("a clone whose counter fell behind: %v", err)
	}
	if _, err := assert(second); err != nil {
		t.Fatalf("the second key: %v", err)
	}
	phish := f.auth.Clone()
	phish.Origin = "http://localhost.evil.example:8443"
	phish.Counter += 10
	if _, err := assert(phish); reason(err) != "webauthn_failed" {
		t.Fatalf("an assertion made for another origin: %v", err)
	}
	forged := f.auth.Clone()
	forged.BadSignature, forged.Counter = true, forged.Counter+20
	if _, err := assert(forged); reason(err) != "webauthn_failed" {
		t.Fatalf("a bad signature: %v", err)
	}
	st, err := f.s.StatusOf(ctx, f.c.UserID)
	if err != nil || len(st.WebAuthn) != 2 || st.WebAuthn[0].LastUsedAt == nil || st.WebAuthn[1].LastUsedAt == nil || !st.WebAuthnAvailable {
		t.Fatalf("status %+v %v", st, err)
	}
	desk := st.WebAuthn[0]
	if desk.Name != "desk key" {
		desk = st.WebAuthn[1]
	}
	// A ceremony begun while the key was there, answered after it is gone.
	token := f.newChallenge(t)
	opts, err := f.s.LoginOptions(ctx, f.load(t, token))
	if err != nil {
		t.Fatal(err)
	}
	if removed, _ := f.s.RemoveWebAuthn(ctx, f.c.UserID, "", desk.ID); !removed {
		t.Fatal("not removed")
	}
	ans, err := f.auth.Get(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.complete(f.load(t, token), Proof{Assertion: ans}); reason(err) != "webauthn_failed" {
		t.Fatalf("a removed key still signs in: %v", err)
	}
	if fac, _ := Enrolled(ctx, f.s.db, f.c.UserID); fac.WebAuthn != 1 || fac.RecoveryCodes != RecoveryCodes {
		t.Fatalf("after removing one of two keys: %+v", fac)
	}
}

func TestWebAuthnNeedsADomainName(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:8080", "", "not a url"} {
		s, err := New(nil, Config{Secret: []byte(strings.Repeat("m", 32)), PublicURL: u})
		if err != nil || s.WebAuthnOff() == nil {
			t.Errorf("%q: WebAuthn on (%v)", u, err)
		}
	}
	if _, err := relyingParty("https://app.glassmkr.com", "glassmkr.com"); err != nil {
		t.Errorf("parent domain as relying party: %v", err)
	}
	if _, err := relyingParty("https://app.glassmkr.com", "evil.com"); err == nil {
		t.Error("an unrelated relying party was accepted")
	}
}

// Turning on a first factor, issuing its recovery codes and ending the
// user's other sessions are one transaction: if the sessions cannot be
// ended, the factor is not on and no codes exist (never a factor whose
// codes were not shown, beside sessions it should have ended).
func TestFirstFactorEndsOtherSessionsInTheSameTransaction(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	keep, _ := f.c.Session(t)
	other, _ := f.c.Session(t)
	e, err := f.s.BeginTOTP(ctx, f.c.UserID, "a@example.com")
	if err != nil {
		t.Fatal(err)
	}
	// Ending sessions fails (as a lost connection or a lock timeout would).
	for _, stmt := range []string{
		`CREATE FUNCTION zz_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$`,
		`CREATE TRIGGER zz_refuse BEFORE UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION zz_refuse()`,
	} {
		if _, err := f.pg.Owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	code, _ := CodeAt(e.Secret, f.clock())
	if first, err := f.s.ConfirmTOTP(ctx, f.c.UserID, code, "", keep); err == nil {
		t.Fatalf("confirmed though the other sessions could not end: %+v", first)
	}
	var confirmed, codes, live int
	count := func() {
		t.Helper()
		if err := f.pg.Owner.QueryRow(ctx, `SELECT (SELECT count(*) FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL),
			(SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1),
			(SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL)`, f.c.UserID).Scan(&confirmed, &codes, &live); err != nil {
			t.Fatal(err)
		}
	}
	if count(); confirmed != 0 || codes != 0 || live != 2 {
		t.Fatalf("after the failure: %d confirmed, %d codes, %d live sessions; want 0, 0, 2", confirmed, codes, live)
	}
	if _, err := f.pg.Owner.Exec(ctx, "DROP TRIGGER zz_refuse ON sessions"); err != nil {
		t.Fatal(err)
	}
	f.advance(30 * time.Second) // a fresh code: each is used once
	code, _ = CodeAt(e.Secret, f.clock())
	first, err := f.s.ConfirmTOTP(ctx, f.c.UserID, code, "", keep)
	if err != nil || first == nil || len(first.RecoveryCodes) != RecoveryCodes || first.SessionsEnded != 1 {
		t.Fatalf("confirm: %+v %v", first, err)
	}
	var otherLive bool
	if err := f.pg.Owner.QueryRow(ctx, "SELECT revoked_at IS NULL FROM sessions WHERE id = $1", other).Scan(&otherLive); err != nil || otherLive {
		t.Fatalf("the other session is still live (%v)", err)
	}
	if count(); confirmed != 1 || codes != RecoveryCodes || live != 1 {
		t.Fatalf("after confirming: %d confirmed, %d codes, %d live sessions", confirmed, codes, live)
	}
}

// A security key and its clone used at once carry the same signature
// counter. Each assertion passes the check against the counter stored
// before either is used; the second to be consumed must still be refused,
// or the clone detection the counter gives is lost to a race.
// registerKey registers the fixture's authenticator for its user, from a
// session of the user's.
func (f *fixture) registerKey(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	sid, _ := f.c.Session(t)
	reg, err := f.s.BeginRegistration(ctx, f.c.UserID, f.c.ID, sid)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.auth.Create(reg.Options)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.s.FinishRegistration(ctx, f.c.UserID, sid, reg.Ceremony, name, resp); err != nil {
		t.Fatal(err)
	}
}

func TestAClonedKeyUsedAtTheSameTimeIsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	f.registerKey(t, "desk key")
	clone := f.auth.Clone() // the same key, the same counter
	proofs := make([]Proof, 2)
	challenges := make([]Challenge, 2)
	for i, a := range []*mfatest.Authenticator{f.auth, clone} {
		token := f.newChallenge(t)
		opts, err := f.s.LoginOptions(ctx, f.load(t, token))
		if err != nil {
			t.Fatal(err)
		}
		ans, err := a.Get(opts)
		if err != nil {
			t.Fatal(err)
		}
		challenges[i], proofs[i] = f.load(t, token), Proof{Assertion: ans}
	}
	// Both checked before either is consumed, as two requests at once.
	var uses []func(pgx.Tx) error
	for i := range challenges {
		_, use, err := f.s.check(ctx, challenges[i], proofs[i], f.clock())
		if err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
		uses = append(uses, use)
	}
	if err := pgx.BeginFunc(ctx, f.s.db, uses[0]); err != nil {
		t.Fatalf("the first use: %v", err)
	}
	if err := pgx.BeginFunc(ctx, f.s.db, uses[1]); reason(err) != "webauthn_failed" {
		t.Fatalf("the clone's use of the same counter: %v, want webauthn_failed", err)
	}
}

// Replacing recovery codes and removing a factor are done for a session
// found live, and stepped up, under the user's lock: one that a password
// change ended while it waited (or that never used the factor) changes
// nothing.
func TestFactorChangesNeedTheSessionStillAdmitted(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	_, codes := f.enrolTOTP(t)
	ended, _ := f.c.Session(t)
	plain, _ := f.c.Session(t)
	live, _ := f.c.Session(t)
	if _, err := f.pg.Owner.Exec(ctx, "UPDATE sessions SET aal = 2, revoked_at = CASE WHEN id = $1 THEN now() END WHERE id = ANY($2::uuid[])",
		ended, []string{ended, live}); err != nil {
		t.Fatal(err)
	}
	for _, sid := range []string{ended, plain} {
		if _, err := f.s.NewRecoveryCodes(ctx, f.c.UserID, sid); !errors.Is(err, ErrStepUpLost) {
			t.Errorf("new recovery codes for %s: %v, want ErrStepUpLost", sid, err)
		}
		if removed, err := f.s.RemoveTOTP(ctx, f.c.UserID, sid); !errors.Is(err, ErrStepUpLost) || removed {
			t.Errorf("removing the app for %s: %v %v, want ErrStepUpLost", sid, removed, err)
		}
		if _, err := f.s.RemoveWebAuthn(ctx, f.c.UserID, sid, "00000000-0000-0000-0000-000000000000"); !errors.Is(err, ErrStepUpLost) {
			t.Errorf("removing a security key for %s: %v, want ErrStepUpLost", sid, err)
		}
	}
	if st, _ := f.s.StatusOf(ctx, f.c.UserID); !st.TOTP.Enabled || st.RecoveryCodesLeft != RecoveryCodes {
		t.Fatalf("after refused changes: %+v", st)
	}
	if _, err := f.complete(f.challenge(t), Proof{Code: codes[0]}); err != nil {
		t.Fatalf("an old recovery code after refused changes: %v", err)
	}
	if fresh, err := f.s.NewRecoveryCodes(ctx, f.c.UserID, live); err != nil || len(fresh) != RecoveryCodes {
		t.Fatalf("new recovery codes for a live session: %v", err)
	}
	if removed, err := f.s.RemoveTOTP(ctx, f.c.UserID, live); err != nil || !removed {
		t.Fatalf("removing the app for a live session: %v %v", removed, err)
	}
}
