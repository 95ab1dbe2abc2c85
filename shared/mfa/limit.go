package mfa

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/clientip"
)

// Limits bound second-factor attempts. Each attempt counts, successes are
// taken back: in effect, failures per window.
type Limits struct {
	// PerUser is how many attempts one user's second factor gets per
	// window, from anywhere. Default 5.
	PerUser int
	// PerIP is how many attempts one client address (an IPv6 one's /64)
	// gets per window, whichever users they are for. Default 20.
	PerIP int
	// Window is the length of the fixed windows. Default 15 minutes.
	Window time.Duration
}

// DefaultLimits are used for every zero field of a Config's Limits.
var DefaultLimits = Limits{PerUser: 5, PerIP: 20, Window: 15 * time.Minute}

func (l Limits) withDefaults() Limits {
	if l.PerUser <= 0 {
		l.PerUser = DefaultLimits.PerUser
	}
	if l.PerIP <= 0 {
		l.PerIP = DefaultLimits.PerIP
	}
	if l.Window <= 0 {
		l.Window = DefaultLimits.Window
	}
	return l
}

// Attempt scopes.
const (
	scopeUser = "user"
	scopeIP   = "ip"
)

// LockedError is returned while a user or an address is over its limit.
type LockedError struct {
	// Until is when attempts are counted afresh.
	Until time.Time
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("mfa: too many attempts until %s", e.Until.UTC().Format(time.RFC3339))
}

// RetryAfter is how long to wait, in whole seconds (at least 1), as of now.
func (e *LockedError) RetryAfter(now time.Time) int {
	return max(1, int(e.Until.Sub(now).Seconds()+0.999))
}

// subjectOf is whom an attempt of subject in scope is counted against: a
// client address by its bucket, as every per-client counter counts
// (clientip.Bucket: an IPv6 address by its /64, whose addresses one
// subscriber holds all of), cut to the column's 64 bytes.
func subjectOf(scope, subject string) string {
	if scope == scopeIP {
		subject = clientip.Bucket(subject)
	}
	if len(subject) > 64 {
		subject = subject[:64]
	}
	return subject
}

const takeAttempt = `INSERT INTO mfa_attempts AS a (scope, subject, window_start, attempts) VALUES ($1, $2, $3, 1)
ON CONFLICT (scope, subject) DO UPDATE SET
	attempts = CASE WHEN a.window_start <= $4 THEN 1 ELSE a.attempts + 1 END,
	window_start = CASE WHEN a.window_start <= $4 THEN $3 ELSE a.window_start END
RETURNING attempts, window_start`

// take counts one attempt of subject in scope and returns a *LockedError
// if it is over limit. Counting first and checking after means parallel
// attempts cannot overshoot the limit.
func (s *Service) take(ctx context.Context, scope, subject string, limit int, now time.Time) error {
	subject = subjectOf(scope, subject)
	if subject == "" {
		return nil
	}
	var n int
	var start time.Time
	if err := s.db.QueryRow(ctx, takeAttempt, scope, subject, now, now.Add(-s.limits.Window)).Scan(&n, &start); err != nil {
		return fmt.Errorf("mfa: count attempt: %w", err)
	}
	if n > limit {
		return &LockedError{Until: start.Add(s.limits.Window)}
	}
	return nil
}

// refund takes back an attempt that succeeded.
func (s *Service) refund(ctx context.Context, scope, subject string, now time.Time) {
	subject = subjectOf(scope, subject)
	if subject == "" {
		return
	}
	// Best effort: a refund lost leaves one attempt counted, no more.
	_, _ = s.db.Exec(ctx, "UPDATE mfa_attempts SET attempts = attempts - 1 WHERE scope = $1 AND subject = $2 AND attempts > 0 AND window_start > $3",
		scope, subject, now.Add(-s.limits.Window))
}

// Locked returns a *LockedError if user has used up its attempts, without
// counting one: the password step asks this, whatever the password was.
func (s *Service) Locked(ctx context.Context, userID string) error {
	if userID == "" {
		return nil
	}
	now := s.now()
	var n int
	var start time.Time
	err := s.db.QueryRow(ctx, "SELECT attempts, window_start FROM mfa_attempts WHERE scope = $1 AND subject = $2", scopeUser, userID).Scan(&n, &start)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mfa: read attempts: %w", err)
	}
	if n >= s.limits.PerUser && start.After(now.Add(-s.limits.Window)) {
		return &LockedError{Until: start.Add(s.limits.Window)}
	}
	return nil
}
