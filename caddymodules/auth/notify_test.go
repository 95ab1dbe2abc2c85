package auth

import (
	"context"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/apikey"
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
	core, logs := observer.New(zap.DebugLevel)
	a := w.authenticator(t, zap.New(core))
	h := handler(a, Handler{})
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
