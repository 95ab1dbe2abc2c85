package auth

import (
	"context"
	"encoding/hex"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/testenv"
)

// Payloads no trigger writes; before they were checked, the first one
// (a key hash longer than 32 bytes) panicked the listener and ended Caddy.
var malformedNotices = []string{
	"k:" + strings.Repeat("ab", 33),
	"k:" + strings.Repeat("ab", 1000),
	"k:" + strings.Repeat("a", 63),
	"k:" + strings.Repeat("zz", 32),
	"k:",
	"s:not-a-session",
	"s:" + strings.ToUpper("0b3c8a4e-51d2-4f0e-9a57-3f1c2d4e5f60"),
	"u:",
	"u:0b3c8a4e-51d2-4f0e-9a57-3f1c2d4e5f6",
	"x:0b3c8a4e-51d2-4f0e-9a57-3f1c2d4e5f60",
	"k",
	"",
}

// TestMalformedNotificationsAreIgnored: any role that can connect may
// NOTIFY on guardian_auth. Payloads the trigger never writes are counted
// and ignored: the listener stays up without reconnecting, nothing cached
// is dropped, no generation moves (which would send lookups to
// PostgreSQL), and a real revocation sent after them is still applied.
func TestMalformedNotificationsAreIgnored(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a, h, logs := w.observed(t)
	for _, key := range []string{w.read, w.write} {
		if got := do(t, h, bearer("GET", "/", key)); got.status != http.StatusOK {
			t.Fatalf("before the notifications: %+v", got)
		}
	}
	a.mu.RLock()
	gen := a.gen
	a.mu.RUnlock()
	ignored := testutil.ToFloat64(notifyMetrics.ignored.WithLabelValues("malformed"))

	ctx := context.Background()
	app := w.pg.App(t)
	for _, p := range malformedNotices {
		if _, err := app.Exec(ctx, "SELECT pg_notify('guardian_auth', $1)", p); err != nil {
			t.Fatal(err)
		}
	}
	// Notifications arrive in order: once the revocation is applied, the
	// payloads before it have been read.
	w.c.Revoke(t, w.read)
	waitFor(t, "the revocation after the malformed payloads", func() bool {
		return do(t, h, bearer("GET", "/", w.read)).status == http.StatusUnauthorized
	})

	if !a.Listening() || logs.FilterMessage("auth revocation listener up").Len() != 1 {
		t.Fatalf("the listener went down or reconnected: listening %v, %d starts", a.Listening(), logs.FilterMessage("auth revocation listener up").Len())
	}
	a.mu.RLock()
	moved := a.gen - gen
	_, cached := a.keys[a.hasher.Sum(w.write)]
	a.mu.RUnlock()
	if moved != 1 {
		t.Errorf("the generation moved %d times for one revocation", moved)
	}
	if !cached {
		t.Error("a malformed payload dropped a cached key")
	}
	if n := testutil.ToFloat64(notifyMetrics.ignored.WithLabelValues("malformed")) - ignored; n != float64(len(malformedNotices)) {
		t.Errorf("%v malformed payloads counted, want %d", n, len(malformedNotices))
	}
	if n := logs.FilterMessageSnippet("malformed revocation notification").Len(); n != 1 {
		t.Errorf("%d warnings for a burst of malformed payloads, want 1", n)
	}
	if got := do(t, h, bearer("GET", "/", w.write)); got.status != http.StatusOK {
		t.Fatalf("an unrevoked key after the notifications: %+v", got)
	}
}

// FuzzNotificationPayload: no payload panics the parser or the caches;
// what the parser accepts is exactly what the trigger writes, and only
// that moves the caches' generation.
func FuzzNotificationPayload(f *testing.F) {
	h := apikey.Hash([]byte("pepper"), "gmk_acct_live_x")
	for _, p := range append([]string{
		"k:" + hex.EncodeToString(h[:]),
		"s:0b3c8a4e-51d2-4f0e-9a57-3f1c2d4e5f60",
		"u:9d6f1e2a-3b4c-4d5e-8f70-8192a3b4c5d6",
	}, malformedNotices...) {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		a := &Authenticator{keys: map[[32]byte]*keyEntry{h: {}}, sessions: map[string]*sessionEntry{"s": {}},
			tokens: nil, log: zap.NewNop()}
		n, ok := parseNotice(payload)
		// Both ways: what the trigger writes (a key's SHA-256 in hex, a
		// session's or user's id as PostgreSQL prints a uuid) is accepted,
		// and nothing else.
		if want := noticeForm.MatchString(payload); ok != want {
			t.Fatalf("%q: accepted %v, want %v", payload, ok, want)
		}
		if ok {
			var want string
			switch n.kind {
			case 'k':
				want = "k:" + hex.EncodeToString(n.key[:])
			case 's', 'u':
				want = string(n.kind) + ":" + n.id
			default:
				t.Fatalf("accepted kind %q", n.kind)
			}
			if !strings.EqualFold(payload, want) || (n.kind != 'k' && payload != want) {
				t.Fatalf("accepted %q as %q", payload, want)
			}
			a.drop(n) // outside apply's recover: a panic here fails
		}
		a.apply(payload)
		if want := map[bool]uint64{true: 2, false: 0}[ok]; a.gen != want {
			t.Fatalf("%q (accepted %v) moved the generation to %d", payload, ok, a.gen)
		}
	})
}

// noticeForm is what the revocation triggers write, written out.
var noticeForm = regexp.MustCompile(`^(k:[0-9a-fA-F]{64}|[su]:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$`)

// TestNotificationsAboutOthersLeaveALookupCached: a lookup's row is not
// cached when a notification naming its credential (or a session's
// user), or a clear, was applied while it ran; notifications about other
// credentials no longer stop it. Any role that can connect may send
// them, and with one global generation a trickle of made-up ones kept
// every lookup from being cached, each request then reaching PostgreSQL.
func TestNotificationsAboutOthersLeaveALookupCached(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	ctx := context.Background()
	p, err := apikey.Parse(w.read)
	if err != nil {
		t.Fatal(err)
	}
	h := a.hasher.Sum(w.read)
	other := testenv.NewCustomer(t, w.pg.Owner, pepper, secret)
	otherSession, _ := other.Session(t)
	var otherKey [32]byte
	otherKey[0] = 1
	unrelated := []notice{{kind: 'k', key: otherKey}, {kind: 's', id: otherSession}, {kind: 'u', id: other.UserID}}

	for _, tc := range []struct {
		name    string
		between []notice
		cached  bool
	}{
		{"nothing", nil, true},
		{"others", unrelated, true},
		{"its key", append(unrelated, notice{kind: 'k', key: h}), false},
		{"its session", []notice{{kind: 's', id: w.sessionID}}, false},
		{"its user", []notice{{kind: 'u', id: w.user}}, false},
		{"a clear", []notice{{kind: 'x'}}, false},
		{"more than remembered", slices.Repeat(unrelated[:1], noticeLogSize), false},
	} {
		a.clear()
		a.mu.RLock()
		gen := a.gen
		a.mu.RUnlock()
		for _, n := range tc.between {
			if n.kind == 'x' {
				a.clear()
			} else {
				a.drop(n)
			}
		}
		if _, err := a.lookupKey(ctx, h, p.Kind, nil, gen); err != nil {
			t.Fatal(err)
		}
		if _, err := a.sessionMiss(ctx, w.sessionID, nil, gen, time.Now()); err != nil {
			t.Fatal(err)
		}
		a.mu.RLock()
		_, key := a.keys[h]
		_, sess := a.sessions[w.sessionID]
		a.mu.RUnlock()
		namesKey := tc.name != "its session" && tc.name != "its user"
		namesSession := tc.name != "its key"
		if wantKey := tc.cached || !namesKey; key != wantKey {
			t.Errorf("%s: key cached %v, want %v", tc.name, key, wantKey)
		}
		if wantSession := tc.cached || !namesSession; sess != wantSession {
			t.Errorf("%s: session cached %v, want %v", tc.name, sess, wantSession)
		}
	}
}

// TestAUserNotificationDropsThatUsersSessions, through the index by
// user, which follows sessions dropped one by one and by shrink.
func TestAUserNotificationDropsThatUsersSessions(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	ctx := context.Background()
	other := testenv.NewCustomer(t, w.pg.Owner, pepper, secret)
	mine := []string{w.sessionID}
	second, _ := w.c.Session(t)
	mine = append(mine, second)
	theirs, _ := other.Session(t)
	cache := func(sids ...string) {
		for _, sid := range sids {
			a.mu.RLock()
			gen := a.gen
			a.mu.RUnlock()
			if _, err := a.sessionMiss(ctx, sid, nil, gen, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	cached := func(sid string) bool {
		a.mu.RLock()
		defer a.mu.RUnlock()
		_, ok := a.sessions[sid]
		return ok
	}
	cache(append(mine, theirs)...)
	cache(mine[0]) // looked up again: listed once
	a.drop(notice{kind: 's', id: mine[1]})
	a.mu.RLock()
	listed := slices.Clone(a.byUser[w.user])
	a.mu.RUnlock()
	if !slices.Equal(listed, mine[:1]) {
		t.Fatalf("user's sessions listed %v, want %v", listed, mine[:1])
	}
	a.drop(notice{kind: 'u', id: w.user})
	if cached(mine[0]) || !cached(theirs) {
		t.Fatalf("after the user's notification: mine cached %v, theirs %v", cached(mine[0]), cached(theirs))
	}
	// shrink drops sessions without notifications: the index is rebuilt.
	cache(mine...)
	a.mu.Lock()
	shrink(a.sessions)
	a.indexUsers()
	for user, sids := range a.byUser {
		for _, sid := range sids {
			if e, ok := a.sessions[sid]; !ok || e.id.UserID != user {
				t.Errorf("index lists %s under %s, cached %v", sid, user, ok)
			}
		}
	}
	n := 0
	for _, sids := range a.byUser {
		n += len(sids)
	}
	if n != len(a.sessions) {
		t.Errorf("index lists %d sessions, %d cached", n, len(a.sessions))
	}
	a.mu.Unlock()
}
