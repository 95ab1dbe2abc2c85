package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// WebhookTimeout bounds one webhook call, connection and answer included.
const WebhookTimeout = 10 * time.Second

// Webhooks posts JSON to URLs through a Guard: it resolves the host once,
// refuses forbidden addresses, connects to the vetted address itself,
// follows no redirect and uses no proxy.
type Webhooks struct {
	guard  *Guard
	client *http.Client
}

// NewWebhooks returns a webhook client that reaches only what guard
// permits.
func NewWebhooks(guard *Guard) *Webhooks {
	w := &Webhooks{guard: guard}
	tr := &http.Transport{
		Proxy:                 nil, // a proxy would resolve the name itself
		DialContext:           w.dial,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          8,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: WebhookTimeout,
	}
	w.client = &http.Client{
		Transport: tr,
		Timeout:   WebhookTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return w
}

// dial connects to one of the addresses the guard vetted for the
// request's host, never to a fresh resolution of the name.
func (w *Webhooks) dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	addrs, err := w.guard.Addrs(ctx, host)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{
		Timeout: 5 * time.Second,
		Control: func(_, dialed string, _ syscall.RawConn) error {
			return w.guard.checkDialed(host, dialed)
		},
	}
	var errs []error
	for _, a := range addrs {
		conn, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// CheckURL validates a webhook URL's shape (http or https, a host, no
// credentials); it does not resolve it.
func CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, errors.New("webhook URL does not parse")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("webhook URL must be http or https, not %q", u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, errors.New("webhook URL has no host")
	}
	if u.User != nil {
		return nil, errors.New("webhook URL may not carry credentials")
	}
	u.Fragment = ""
	return u, nil
}

// Post sends body as JSON to target, once. A 2xx answer is success; a
// redirect, a refused target and any other 4xx except 408 and 429 are
// permanent failures; the rest may be retried. Callers with a retry
// schedule of their own use it (secretscan's outbox keeps its retries in
// PostgreSQL, across restarts); PostRetrying retries in memory.
func (w *Webhooks) Post(ctx context.Context, target string, body any) error {
	u, b, err := webhookRequest(target, body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(b))
	if err != nil {
		return Permanent(err)
	}
	setWebhookHeaders(req.Header)
	resp, err := w.client.Do(req)
	return finish(u.Host, resp, err)
}

// RetryPolicy is how PostRetrying retries.
type RetryPolicy struct {
	// Attempts, the first included.
	Attempts int
	// Wait is the wait before the first retry; it doubles (with jitter) up
	// to MaxWait. A 429 or 503 answer's Retry-After is honoured instead,
	// up to MaxWait: a receiver cannot hold a worker longer than that.
	Wait, MaxWait time.Duration
}

// PostRetrying posts like Post, retrying transient failures with
// go-retryablehttp under policy until ctx ends. Before each retry it calls
// onRetry (when not nil) with the number of the attempt that failed, why,
// and the wait before the next. Each attempt is bounded by WebhookTimeout.
func (w *Webhooks) PostRetrying(ctx context.Context, target string, body any, policy RetryPolicy,
	onRetry func(failed int, err error, wait time.Duration)) error {
	u, b, err := webhookRequest(target, body)
	if err != nil {
		return err
	}
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, u.String(), b)
	if err != nil {
		return Permanent(err)
	}
	setWebhookHeaders(req.Header)
	// One retryablehttp.Client per post (a small struct over the shared
	// http.Client), so its hooks can carry this post's last failure.
	var last error
	c := &retryablehttp.Client{
		HTTPClient: w.client,
		// Its logger would print the URL, whose path is often the
		// webhook's secret; onRetry reports instead.
		Logger:       nil,
		RetryWaitMin: policy.Wait,
		RetryWaitMax: policy.MaxWait,
		RetryMax:     max(policy.Attempts, 1) - 1,
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			last = outcome(u.Host, resp, err)
			return last != nil && !IsPermanent(last), nil
		},
		Backoff: func(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
			wait := retryWait(lo, hi, attempt, resp)
			if onRetry != nil {
				onRetry(attempt+1, last, wait)
			}
			return wait
		},
		// The last attempt's answer or error, as Post would have had it.
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
	resp, err := c.Do(req)
	return finish(u.Host, resp, err)
}

// retryWait is the wait before retry attempt+1: the answer's Retry-After
// where a 429 or 503 gives one, else lo doubled per attempt with jitter;
// never over hi, and a Retry-After never under lo.
func retryWait(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	doubled := retryablehttp.DefaultBackoff(lo, hi, attempt, nil)
	if asked := retryablehttp.DefaultBackoff(lo, hi, attempt, resp); asked != doubled {
		// Not under lo: a Retry-After of 0 (or a date past) would spend
		// every attempt at once.
		return max(min(asked, hi), lo)
	}
	// Deliveries that failed together do not retry together.
	return Jitter(doubled)
}

func webhookRequest(target string, body any) (*url.URL, []byte, error) {
	u, err := CheckURL(target)
	if err != nil {
		return nil, nil, Permanent(err)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, nil, Permanent(fmt.Errorf("webhook body: %w", err))
	}
	return u, b, nil
}

func setWebhookHeaders(h http.Header) {
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "Guardian-Notify/1")
}

// finish reads what is left of an answer (bounded) so the connection can
// be reused, and says what the attempt came to.
func finish(host string, resp *http.Response, err error) error {
	if resp != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
	return outcome(host, resp, err)
}

// outcome is an attempt's result: nil for a 2xx answer, a Permanent error
// for one no retry can change, any other error for one a retry may.
func outcome(host string, resp *http.Response, err error) error {
	if err != nil {
		// The client's *url.Error quotes the whole URL, and a webhook's
		// path is often its secret (Slack's, for one): keep the cause only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if IsPermanent(err) {
			return Permanent(fmt.Errorf("webhook %s: %w", host, err))
		}
		return fmt.Errorf("webhook %s: %w", host, err)
	}
	switch s := resp.StatusCode; {
	case s >= 200 && s < 300:
		return nil
	case s >= 300 && s < 400:
		return Permanent(fmt.Errorf("webhook %s answered %d: redirects are not followed", host, s))
	case s >= 400 && s < 500 && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests:
		return Permanent(fmt.Errorf("webhook %s answered %d", host, s))
	default:
		return fmt.Errorf("webhook %s answered %d", host, s)
	}
}
