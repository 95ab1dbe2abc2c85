package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/notify"
)

// outbox delivers revocation notices from the revocation_notices table
// (migration 0021): the revoking transaction writes one row per delivery,
// and a row is deleted once delivered, so a notice survives a crash or a
// restart of this function. Delivery is at least once: a process that
// dies between sending and deleting leaves the row to be sent again.
//
// A row is taken by moving its next_attempt_at past the attempt (a lease),
// with FOR UPDATE SKIP LOCKED, so several processes (one per edge host)
// never take the same row at once. A failure that a retry may fix waits
// retry, doubling up to maxRetry; a permanent one (a refused recipient, a
// forbidden webhook) and a row first taken more than maxAge ago are given
// up and logged.
type outbox struct {
	db       *pgxpool.Pool
	mailer   *notify.Mailer // nil: no relay configured; e-mail rows wait for a process with one
	hooks    *notify.Webhooks
	webhooks []string // GUARDIAN_SECURITY_WEBHOOKS
	log      *zap.Logger

	lease    time.Duration // longer than one delivery attempt
	retry    time.Duration // the first retry's wait
	maxRetry time.Duration
	maxAge   time.Duration
	poll     time.Duration // how often due rows are looked for unprompted
	batch    int

	wake chan struct{}

	delivered, failed, retried atomic.Int64
}

func newOutbox(db *pgxpool.Pool, mailer *notify.Mailer, hooks *notify.Webhooks, webhooks []string, log *zap.Logger) *outbox {
	return &outbox{db: db, mailer: mailer, hooks: hooks, webhooks: webhooks, log: log,
		lease: 2 * time.Minute, retry: 10 * time.Second, maxRetry: 30 * time.Minute, maxAge: 24 * time.Hour,
		poll: 30 * time.Second, batch: 16, wake: make(chan struct{}, 1)}
}

// notice is one customer's revoked keys, to be told.
type notice struct {
	customer string
	keys     []revokedKey
}

// queue writes the deliveries of notices in tx, the transaction that
// revoked their keys: e-mails to each customer's admins as they are now
// (one row per admin, so a refused address keeps the notice from nobody
// else), and a call of each of the operator's webhooks.
//
// The e-mails are written even by a process without a mail relay: the
// customer is the one the posture promises to tell, so the rows wait for
// a process with a relay (another host's, or this one's once
// GUARDIAN_SMTP_ADDR is set) instead of never being written.
func (o *outbox) queue(ctx context.Context, tx pgx.Tx, notices []notice) error {
	customers := make([]string, len(notices))
	for i, n := range notices {
		customers[i] = n.customer
	}
	emails, err := adminEmails(ctx, tx, customers)
	if err != nil {
		return fmt.Errorf("admins' addresses: %w", err)
	}
	b := &pgx.Batch{}
	for _, n := range notices {
		to := emails[n.customer]
		switch {
		case len(to) == 0:
			o.log.Warn("secret scanning: customer has no admin to e-mail", zap.String("customer_id", n.customer))
		case o.mailer == nil:
			o.log.Warn("secret scanning: the customer's e-mails wait for a process with a mail relay; "+notify.EnvSMTPAddr+" is not set here",
				zap.String("customer_id", n.customer), zap.Int("emails", len(to)))
		}
		nt := revocationNotice(n.customer, n.keys, to, o.webhooks)
		for _, addr := range nt.To {
			b.Queue(insertNotice, n.customer, "email", addr, nt.Subject, nt.Text)
		}
		if len(nt.Webhooks) == 0 {
			continue
		}
		// One body for every webhook and every retry: its id lets a
		// receiver drop a repeat.
		body, err := json.Marshal(map[string]any{"id": notify.NewID(), "event": nt.Event, "occurred_at": time.Now().UTC(), "data": nt.Data})
		if err != nil {
			return fmt.Errorf("webhook body: %w", err)
		}
		for _, target := range nt.Webhooks {
			b.Queue(insertNotice, n.customer, "webhook", target, "", string(body))
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, b).Close()
}

const insertNotice = `INSERT INTO revocation_notices (customer_id, channel, target, subject, body) VALUES ($1, $2, $3, $4, $5)`

// kick has the outbox look for due rows now (after a revocation commits).
func (o *outbox) kick() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// run delivers due rows until ctx ends: at once, when kicked, and every
// poll (retries, and rows a stopped process left).
func (o *outbox) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.wake:
		case <-t.C:
		}
		next := o.poll
		n, err := o.deliverDue(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			o.log.Warn("secret scanning: revocation notices not read; retrying", zap.Duration("retry_in", o.poll), zap.Error(err))
		case n == o.batch:
			next = 0 // more may be due
		}
		t.Reset(next)
	}
}

// pendingNotice is a taken row.
type pendingNotice struct {
	id               int64
	customer         string
	channel, target  string
	subject, body    string
	firstAttempt     time.Time // the row's first take: its day of retries runs from here
	attempts         int
	err              error
	giveUp, canceled bool
}

// takeDue leases up to $2 due rows for $1; a process without a mail
// relay ($3 false) leaves e-mail rows to those with one (a host whose
// relay is not configured must not give up the others' e-mails). Of
// webhook rows, a process takes those of the webhooks it is configured
// with ($4): another host's webhook may be one its GUARDIAN_WEBHOOK_ALLOW
// lets through and this one's refuses for good. A webhook row no process
// took for $5 (no host has that webhook any more) is taken by any, to be
// given up unsent (attempt).
const takeDue = `UPDATE revocation_notices SET attempts = attempts + 1, next_attempt_at = now() + $1::interval,
	first_attempt_at = coalesce(first_attempt_at, now())
WHERE id IN (SELECT id FROM revocation_notices WHERE next_attempt_at <= now() AND (channel <> 'email' OR $3)
               AND (channel <> 'webhook' OR target = ANY($4::text[]) OR created_at < now() - $5::interval)
             ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING id, customer_id::text, channel, target, subject, body, first_attempt_at, attempts`

// deliverDue takes up to batch due rows, delivers them concurrently and
// records each outcome. It returns how many it took.
func (o *outbox) deliverDue(ctx context.Context) (int, error) {
	rows, err := o.db.Query(ctx, takeDue, o.lease, o.batch, o.mailer != nil, nonNilStrings(o.webhooks), o.maxAge)
	if err != nil {
		return 0, err
	}
	taken, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*pendingNotice, error) {
		p := &pendingNotice{}
		return p, r.Scan(&p.id, &p.customer, &p.channel, &p.target, &p.subject, &p.body, &p.firstAttempt, &p.attempts)
	})
	if err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	for _, p := range taken {
		wg.Go(func() { o.attempt(ctx, p) })
	}
	wg.Wait()
	// A stopping process still records what it did, within one deadline
	// for all (the runtime kills a function 10 s after asking it to stop).
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, p := range taken {
		o.record(rctx, p)
	}
	return len(taken), nil
}

// attempt makes one delivery of p, unless p was first taken more than
// maxAge ago (then it is given up unsent: a row whose deletion keeps
// failing is not sent again and again). The age runs from the first
// take, not the writing: an e-mail that waited for a process with a mail
// relay gets its day of retries.
func (o *outbox) attempt(ctx context.Context, p *pendingNotice) {
	if time.Since(p.firstAttempt) >= o.maxAge && p.attempts > 1 {
		p.err, p.giveUp = errors.New("older than a day"), true
		return
	}
	switch p.channel {
	case "email":
		if o.mailer == nil {
			p.err = notify.Permanent(errors.New("no SMTP relay is configured"))
			break
		}
		p.err = o.mailer.Send(ctx, notify.Mail{To: []string{p.target}, Subject: p.subject, Text: p.body})
	case "webhook":
		if !slices.Contains(o.webhooks, p.target) {
			// No host has this webhook any more (takeDue): the operator
			// may have removed it because its address leaked or its
			// domain lapsed, so the notice (key names, where they
			// leaked) is not sent there.
			p.err = notify.Permanent(errors.New("no process is configured with this webhook any more"))
			break
		}
		p.err = o.hooks.Post(ctx, p.target, json.RawMessage(p.body))
	default:
		p.err = notify.Permanent(fmt.Errorf("unknown channel %q", p.channel))
	}
	p.canceled = p.err != nil && ctx.Err() != nil
	p.giveUp = p.err != nil && !p.canceled && (notify.IsPermanent(p.err) || time.Since(p.firstAttempt) >= o.maxAge)
}

// record deletes a delivered or given-up row, or sets when it is due
// again. Should that fail, the row's lease runs out and it is taken again
// (an e-mail may then arrive twice).
func (o *outbox) record(rctx context.Context, p *pendingNotice) {
	fields := []zap.Field{zap.Int64("notice", p.id), zap.String("customer_id", p.customer), zap.String("channel", p.channel),
		zap.String("target", o.safeTarget(p)), zap.Int("attempts", p.attempts)}
	var err error
	switch {
	case p.err == nil:
		_, err = o.db.Exec(rctx, `DELETE FROM revocation_notices WHERE id = $1`, p.id)
		o.log.Info("secret scanning: revocation notice delivered", append(fields, zap.Int64("delivered_total", o.delivered.Add(1)))...)
	case p.giveUp:
		_, err = o.db.Exec(rctx, `DELETE FROM revocation_notices WHERE id = $1`, p.id)
		o.log.Error("secret scanning: revocation notice given up", append(fields, zap.Bool("permanent", notify.IsPermanent(p.err)),
			zap.Int64("failed_total", o.failed.Add(1)), zap.Error(p.err))...)
	default:
		wait := time.Duration(0) // cut short by this process stopping: due at once, for another
		if !p.canceled {
			wait = o.backoff(p.attempts)
			o.log.Warn("secret scanning: revocation notice not delivered; retrying", append(fields, zap.Duration("retry_in", wait),
				zap.Int64("retried_total", o.retried.Add(1)), zap.Error(p.err))...)
		}
		_, err = o.db.Exec(rctx, `UPDATE revocation_notices SET next_attempt_at = now() + $2::interval WHERE id = $1`, p.id, wait)
	}
	if err != nil {
		o.log.Warn("secret scanning: a revocation notice's outcome was not recorded; it is taken again when its lease ends",
			zap.Int64("notice", p.id), zap.Error(err))
	}
}

// backoff is the wait before the next attempt after the n-th: retry,
// doubling, at most maxRetry, jittered.
func (o *outbox) backoff(n int) time.Duration {
	d := o.retry
	for i := 1; i < n && d < o.maxRetry; i++ {
		d *= 2
	}
	d = min(d, o.maxRetry)
	return notify.Jitter(d)
}

// safeTarget names a delivery's target for the logs: never an address,
// and of a webhook only its host.
func (o *outbox) safeTarget(p *pendingNotice) string {
	if p.channel != "webhook" {
		return "admin"
	}
	return notify.HostOf(p.target)
}

// nonNilStrings is s, or an empty slice for nil (an array, not NULL).
func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
