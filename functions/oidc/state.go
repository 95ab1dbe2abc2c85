package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"
)

// The sign-in in flight lives in one cookie on the browser that started
// it, not on the server: a function process may stop when idle and several
// edges may serve one site, and the state must survive both. The cookie is
// sealed with AES-256-GCM under a key derived from the session secret, so
// it cannot be forged or altered (and the PKCE verifier in it cannot be
// read), and it expires after stateTTL. It carries the state, and the
// callback's state must equal it (compared in constant time): the
// callback only works in the browser that began the sign-in, which stops
// login CSRF. A state is accepted once per process (usedStates); beyond a
// process, the provider's one-time code refuses a second exchange.
const (
	stateCookie = "guardian_oidc"
	statePath   = "/auth/google/"
	stateTTL    = 10 * time.Minute
	// maxStateCookie bounds what open looks at; real cookies are ~250 bytes.
	maxStateCookie = 1024
	// stateKeyLabel separates this key from every other use of the secret.
	stateKeyLabel = "guardian/oidc-state-cookie/v1"
)

// flow is one sign-in in flight.
type flow struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	Expires  int64  `json:"x"`
	// Reauth marks a step-up: the provider was asked to authenticate the
	// user again (max_age=0), and the answer must show it did.
	Reauth bool `json:"a,omitempty"`
	// Next is the dashboard page to return to (checked by nextPage).
	Next string `json:"r,omitempty"`
	// User is, for a step-up, the user signed in when it started: only
	// that user's Google account confirms it.
	User string `json:"u,omitempty"`
}

// Reasons a state cookie is refused.
var (
	errStateMissing = errors.New("state_missing")
	errStateInvalid = errors.New("state_invalid")
	errStateExpired = errors.New("state_expired")
)

// sealer seals and opens state cookies.
type sealer struct{ aead cipher.AEAD }

func newSealer(secret []byte) (*sealer, error) {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(stateKeyLabel))
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal returns the cookie value for f.
func (s *sealer) seal(f flow) (string, error) {
	plain, err := json.Marshal(f)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(stateCookie))), nil
}

// open returns the flow in a cookie value, as of now.
func (s *sealer) open(value string, now time.Time) (flow, error) {
	var f flow
	if value == "" {
		return f, errStateMissing
	}
	if len(value) > maxStateCookie {
		return f, errStateInvalid
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(value)
	if err != nil || len(raw) < s.aead.NonceSize()+s.aead.Overhead() {
		return f, errStateInvalid
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], []byte(stateCookie))
	if err != nil {
		return f, errStateInvalid
	}
	if err := json.Unmarshal(plain, &f); err != nil || f.State == "" || f.Nonce == "" || f.Verifier == "" {
		return flow{}, errStateInvalid
	}
	if !now.Before(time.Unix(f.Expires, 0)) {
		return flow{}, errStateExpired
	}
	return f, nil
}

// matches reports, in constant time, whether the callback's state is the
// flow's.
func (f flow) matches(state string) bool { return equal(state, f.State) }

// equal compares a value received against one expected, in constant time;
// an empty value never matches.
func equal(got, want string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func flowCookie(value string, now time.Time, expires time.Time) *http.Cookie {
	return &http.Cookie{
		Name:     stateCookie,
		Value:    value,
		Path:     statePath,
		MaxAge:   int(expires.Sub(now).Seconds()),
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteLaxMode,
	}
}

func clearFlowCookie() *http.Cookie {
	c := flowCookie("", time.Time{}, time.Time{})
	c.MaxAge = -1
	return c
}

// randomToken returns n random bytes in base64url.
func randomToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// usedStates remembers the states already presented to the callback until
// their cookie would have expired, so a replayed callback is refused. It
// forgets from the oldest on, so a callback costs the same however many
// states are held, and holds at most maxUsedStates: anyone may start
// sign-ins, from as many addresses as they have. Past that bound the
// oldest are forgotten early, which only loses this second guard for
// them: the provider takes each code once.
type usedStates struct {
	mu    sync.Mutex
	seen  map[string]time.Time
	order []usedState // as used; expiries nearly ascending (one TTL each)
	max   int
}

type usedState struct {
	state   string
	expires time.Time
}

// maxUsedStates bounds usedStates (~100 bytes each).
const maxUsedStates = 100_000

func newUsedStates() *usedStates {
	return &usedStates{seen: map[string]time.Time{}, max: maxUsedStates}
}

// use marks state as used and reports whether it was fresh.
func (u *usedStates) use(state string, expires, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for len(u.order) > 0 && (!now.Before(u.order[0].expires) || len(u.order) >= u.max) {
		delete(u.seen, u.order[0].state)
		u.order = u.order[1:]
	}
	if _, ok := u.seen[state]; ok {
		return false
	}
	u.seen[state] = expires
	u.order = append(u.order, usedState{state, expires})
	return true
}
