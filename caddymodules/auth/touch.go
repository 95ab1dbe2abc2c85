package auth

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// toucher records when keys and sessions were last used and writes them
// in one statement per interval, so a busy key costs no write per request.
type toucher struct {
	db       *pgxpool.Pool
	interval time.Duration
	log      *zap.Logger

	mu       sync.Mutex
	keys     map[string]time.Time
	sessions map[string]time.Time
	// max bounds each map: while writes keep failing (PostgreSQL away, a
	// grant lost), every credential used since would otherwise stay.
	// Past it, a newly used credential's time is not recorded, as a
	// skipped row's is not (see touchKeys).
	max int

	stopped chan struct{} // closed when run returns
}

func newToucher(db *pgxpool.Pool, interval time.Duration, log *zap.Logger) *toucher {
	return &toucher{db: db, interval: interval, log: log, keys: map[string]time.Time{}, sessions: map[string]time.Time{},
		max: maxTouched, stopped: make(chan struct{})}
}

// maxTouched is toucher's bound per map (~100 bytes an entry).
const maxTouched = 100_000

func (t *toucher) key(id string, at time.Time) {
	t.mu.Lock()
	t.note(t.keys, id, at)
	t.mu.Unlock()
}

func (t *toucher) session(id string, at time.Time) {
	t.mu.Lock()
	t.note(t.sessions, id, at)
	t.mu.Unlock()
}

// note records at for id in m if it is newer and m has room (t.mu held).
func (t *toucher) note(m map[string]time.Time, id string, at time.Time) {
	last, ok := m[id]
	if !ok && len(m) >= t.max {
		return
	}
	if at.After(last) {
		m[id] = at
	}
}

// run flushes every interval until ctx ends. A flush that ctx cuts short
// puts its times back; the final flush must wait for that (stopped).
func (t *toucher) run(ctx context.Context) {
	defer close(t.stopped)
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.flush(ctx)
		}
	}
}

// The writes skip rows another transaction has locked: the revocations
// that end many keys or sessions at once (account deletion, signing out
// everywhere, a first factor, a password change) lock them in their own
// order, and a writer waiting for one of them while holding others could
// deadlock with it, failing the user's action. A skipped row's time is
// lost; the next use writes a newer one. NO KEY UPDATE is the lock the
// update itself takes: a plain FOR UPDATE would also collide with the
// key-share locks of foreign keys (a rotated key's successor naming it).
const (
	touchKeys = `UPDATE api_keys k SET last_used_at = v.at
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at)
WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.at)
	AND k.id IN (SELECT id FROM api_keys WHERE id = ANY($1::uuid[]) FOR NO KEY UPDATE SKIP LOCKED)`
	touchSessions = `UPDATE sessions s SET last_seen_at = v.at
FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at)
WHERE s.id = v.id AND s.last_seen_at < v.at
	AND s.id IN (SELECT id FROM sessions WHERE id = ANY($1::uuid[]) FOR NO KEY UPDATE SKIP LOCKED)`
)

// flush writes what was recorded since the last flush. On failure the
// times are kept for the next try (a newer use wins).
func (t *toucher) flush(ctx context.Context) {
	t.mu.Lock()
	keys, sessions := t.keys, t.sessions
	t.keys, t.sessions = map[string]time.Time{}, map[string]time.Time{}
	t.mu.Unlock()
	write := func(sql string, m map[string]time.Time, keep func(string, time.Time)) {
		if len(m) == 0 {
			return
		}
		ids := make([]string, 0, len(m))
		ats := make([]time.Time, 0, len(m))
		for id, at := range m {
			ids, ats = append(ids, id), append(ats, at)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := t.db.Exec(cctx, sql, ids, ats); err != nil {
			t.log.Warn("writing last-used times failed; will retry", zap.Error(err), zap.Int("rows", len(ids)))
			for id, at := range m {
				keep(id, at)
			}
		}
	}
	write(touchKeys, keys, t.key)
	write(touchSessions, sessions, t.session)
}
