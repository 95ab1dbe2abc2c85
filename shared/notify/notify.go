// Package notify tells people that something happened: e-mail over SMTP
// and JSON webhooks, delivered in the background with bounded retries so
// that a slow or broken mail relay or receiver never holds up (or fails)
// the work that caused the notice.
//
// Webhook targets pass an SSRF check (ARCHITECTURE §5, see Guard); e-mail
// goes to the one relay the operator configured. Nothing here logs a
// message's text or a recipient's address: logs say what kind of notice
// failed, how, and running totals (delivered, failed, dropped), which are
// what an operator alerts on.
//
// Environment (read by LoadConfig):
//
//	GUARDIAN_SMTP_ADDR       host:port of the relay; unset: no e-mail; on this host (loopback): no STARTTLS
//	GUARDIAN_SMTP_FROM       sender address (required with the relay)
//	GUARDIAN_SMTP_USER       optional, with GUARDIAN_SMTP_PASSWORD: AUTH PLAIN (TLS or localhost only)
//	GUARDIAN_WEBHOOK_ALLOW   comma-separated CIDRs, addresses or host names that webhooks may reach although internal
package notify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
)

// Environment variables.
const (
	EnvSMTPAddr     = "GUARDIAN_SMTP_ADDR"
	EnvSMTPFrom     = "GUARDIAN_SMTP_FROM"
	EnvSMTPUser     = "GUARDIAN_SMTP_USER"
	EnvSMTPPassword = "GUARDIAN_SMTP_PASSWORD"
	EnvSMTPTLS      = "GUARDIAN_SMTP_TLS"
	EnvWebhookAllow = "GUARDIAN_WEBHOOK_ALLOW"
)

// Config is what a Notifier needs.
type Config struct {
	// SMTP is the relay; an empty Addr disables e-mail.
	SMTP SMTPConfig
	// Allow lists the webhook targets permitted although internal.
	Allow []string
	// Resolver resolves webhook hosts; nil for the system's.
	Resolver Resolver
	// Log receives delivery outcomes. nil: no logs.
	Log *zap.Logger

	// Attempts per delivery, the first included. Default 4.
	Attempts int
	// Backoff is the wait before the first retry; it doubles (with
	// jitter) up to MaxBackoff. Defaults 2s and 30s.
	Backoff, MaxBackoff time.Duration
	// QueueSize bounds deliveries waiting; a full queue drops the new
	// delivery (and logs it). Default 1024.
	QueueSize int
	// Workers deliver concurrently. Default 4.
	Workers int
}

// LoadConfig reads the SMTP relay and the webhook allow-list from env.
func LoadConfig(env *config.Loader) Config {
	return Config{
		SMTP: SMTPConfig{
			Addr:     env.Optional(EnvSMTPAddr, ""),
			From:     env.Optional(EnvSMTPFrom, ""),
			User:     env.Optional(EnvSMTPUser, ""),
			Password: env.OptionalSecret(EnvSMTPPassword),
			TLSMode:  env.Optional(EnvSMTPTLS, TLSRequired),
		},
		Allow: SplitList(env.Optional(EnvWebhookAllow, "")),
	}
}

// SplitList splits a comma-separated setting, dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// WebhookURLs parses a comma-separated list of webhook URLs, naming the
// variable (never the value) when one is malformed.
func WebhookURLs(name, list string) ([]string, error) {
	var out []string
	for i, raw := range SplitList(list) {
		u, err := CheckURL(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: item %d: %w", name, i+1, err)
		}
		out = append(out, u.String())
	}
	return out, nil
}

// Notice is one thing to tell: by e-mail to To, and by webhook to each
// of Webhooks, which receive {"id", "event", "occurred_at", "data"}.
type Notice struct {
	// Event names the kind of notice, e.g. "api_key.revoked".
	Event string
	// Subject and Text are the e-mail's.
	Subject, Text string
	// To are the e-mail recipients; none: no e-mail.
	To []string
	// Data is the webhook payload's "data" member.
	Data any
	// Webhooks are the URLs to post to.
	Webhooks []string
}

// Stats are running totals of deliveries (an e-mail to one recipient, or
// one webhook call, however many attempts it took).
type Stats struct {
	Delivered, Failed, Dropped, Retried int64
}

// Notifier delivers notices in the background.
type Notifier struct {
	mailer *Mailer
	hooks  *Webhooks
	cfg    Config
	log    *zap.Logger

	ctx    context.Context // cancelled when Close gives up waiting
	cancel context.CancelFunc
	mu     sync.RWMutex // guards closed and sends on queue
	closed bool
	queue  chan delivery
	wg     sync.WaitGroup

	delivered, failed, dropped, retried atomic.Int64
}

type delivery struct {
	event   string
	channel string // "email" or "webhook"
	target  string // safe to log: the webhook's host, or the recipient count
	// send makes one attempt; deliver retries it.
	send func(context.Context) error
	// sendRetrying, set instead of send, makes every attempt itself
	// (webhooks, through go-retryablehttp), calling back before a retry.
	sendRetrying func(ctx context.Context, onRetry func(failed int, err error, wait time.Duration)) error
}

// New starts a notifier's workers. Stop it with Close.
func New(cfg Config) (*Notifier, error) {
	if cfg.Attempts <= 0 {
		cfg.Attempts = 4
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 2 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1024
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	n := &Notifier{cfg: cfg, log: cfg.Log, queue: make(chan delivery, cfg.QueueSize)}
	if n.log == nil {
		n.log = zap.NewNop()
	}
	if cfg.SMTP.Addr != "" {
		m, err := NewMailer(cfg.SMTP)
		if err != nil {
			return nil, err
		}
		n.mailer = m
	}
	guard, err := NewGuard(cfg.Allow, cfg.Resolver)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvWebhookAllow, err)
	}
	n.hooks = NewWebhooks(guard)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	for range cfg.Workers {
		n.wg.Add(1)
		go n.work()
	}
	return n, nil
}

// MailEnabled reports whether a relay is configured.
func (n *Notifier) MailEnabled() bool { return n.mailer != nil }

// Send queues the notice's deliveries and returns at once. It never
// fails: what cannot be queued is logged and counted as dropped.
func (n *Notifier) Send(notice Notice) {
	id := NewID()
	at := time.Now().UTC()
	if len(notice.To) > 0 {
		if n.mailer == nil {
			n.log.Warn("notify: e-mail not sent, no SMTP relay configured", zap.String("event", notice.Event), zap.String("setting", EnvSMTPAddr))
		} else {
			// One message per recipient, each retried on its own: a relay
			// refusing one address (a former administrator's, say) must
			// not keep the notice from the others, and a retry must not
			// send it twice to those who had it.
			for i, to := range notice.To {
				m := Mail{To: []string{to}, Subject: notice.Subject, Text: notice.Text}
				n.enqueue(delivery{event: notice.Event, channel: "email", target: fmt.Sprintf("recipient %d of %d", i+1, len(notice.To)),
					send: func(ctx context.Context) error { return n.mailer.Send(ctx, m) }})
			}
		}
	}
	for _, target := range notice.Webhooks {
		body := map[string]any{"id": id, "event": notice.Event, "occurred_at": at, "data": notice.Data}
		policy := RetryPolicy{Attempts: n.cfg.Attempts, Wait: n.cfg.Backoff, MaxWait: n.cfg.MaxBackoff}
		n.enqueue(delivery{event: notice.Event, channel: "webhook", target: HostOf(target),
			sendRetrying: func(ctx context.Context, onRetry func(int, error, time.Duration)) error {
				return n.hooks.PostRetrying(ctx, target, body, policy, onRetry)
			}})
	}
}

func (n *Notifier) enqueue(d delivery) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if !n.closed {
		select {
		case n.queue <- d:
			return
		default:
		}
	}
	dropped := n.dropped.Add(1)
	n.log.Error("notify: delivery dropped (queue full or closing)", zap.String("event", d.event), zap.String("channel", d.channel),
		zap.String("target", d.target), zap.Int64("dropped_total", dropped))
}

func (n *Notifier) work() {
	defer n.wg.Done()
	for d := range n.queue {
		n.deliver(d)
	}
}

// deliver makes up to Attempts tries, waiting Backoff (doubling, with
// jitter) between them: a webhook's through go-retryablehttp
// (PostRetrying, which also honours a Retry-After), an e-mail's here.
func (n *Notifier) deliver(d delivery) {
	if d.sendRetrying != nil {
		attempts := 1
		err := d.sendRetrying(n.ctx, func(failed int, err error, wait time.Duration) {
			attempts = failed + 1
			n.retrying(d, failed, err, wait)
		})
		n.settle(d, attempts, err)
		return
	}
	wait := n.cfg.Backoff
	var err error
	attempt := 1
	for ; attempt <= n.cfg.Attempts; attempt++ {
		if n.ctx.Err() != nil {
			err = errors.Join(err, n.ctx.Err())
			break
		}
		ctx, cancel := context.WithTimeout(n.ctx, MailTimeout)
		err = d.send(ctx)
		cancel()
		if err == nil || IsPermanent(err) || attempt == n.cfg.Attempts {
			break
		}
		sleep := Jitter(wait)
		n.retrying(d, attempt, err, sleep)
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-n.ctx.Done():
			t.Stop()
		}
		wait = min(wait*2, n.cfg.MaxBackoff)
	}
	n.settle(d, attempt, err)
}

// retrying counts and logs a failed attempt that will be retried.
func (n *Notifier) retrying(d delivery, attempt int, err error, wait time.Duration) {
	retried := n.retried.Add(1)
	n.log.Warn("notify: delivery failed, retrying", zap.String("event", d.event), zap.String("channel", d.channel), zap.String("target", d.target),
		zap.Int("attempt", attempt), zap.Duration("retry_in", wait), zap.Int64("retried_total", retried), zap.Error(err))
}

// settle counts and logs a delivery's outcome.
func (n *Notifier) settle(d delivery, attempts int, err error) {
	if err == nil {
		total := n.delivered.Add(1)
		n.log.Info("notify: delivered", zap.String("event", d.event), zap.String("channel", d.channel), zap.String("target", d.target),
			zap.Int("attempts", attempts), zap.Int64("delivered_total", total))
		return
	}
	failed := n.failed.Add(1)
	n.log.Error("notify: delivery failed", zap.String("event", d.event), zap.String("channel", d.channel), zap.String("target", d.target),
		zap.Bool("permanent", IsPermanent(err)), zap.Int64("failed_total", failed), zap.Error(err))
}

// Stats returns the running totals.
func (n *Notifier) Stats() Stats {
	return Stats{Delivered: n.delivered.Load(), Failed: n.failed.Load(), Dropped: n.dropped.Load(), Retried: n.retried.Load()}
}

// Close stops taking notices and waits for queued deliveries until ctx
// ends; then it abandons what is left (counted as failed) and returns
// once the workers have stopped.
func (n *Notifier) Close(ctx context.Context) {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.queue)
	}
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		n.cancel()
		<-done
	}
	n.cancel()
	s := n.Stats()
	n.log.Info("notify: stopped", zap.Int64("delivered_total", s.Delivered), zap.Int64("failed_total", s.Failed),
		zap.Int64("dropped_total", s.Dropped), zap.Int64("retried_total", s.Retried))
}

// Jitter spreads d by ±20%, so that deliveries that failed together do
// not retry together.
func Jitter(d time.Duration) time.Duration {
	// ±20%: deliveries that failed together do not retry together.
	return d + time.Duration((mrand.Float64()*0.4-0.2)*float64(d))
}

// HostOf names a webhook URL for logs by its host alone: its path is
// often its secret (Slack's, for one).
func HostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return u.Host
	}
	return "(unparsable URL)"
}

// NewID returns a random notice id, as webhook bodies carry: a receiver
// drops a notice whose id it has seen.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
