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

// Post sends body as JSON to target. A 2xx answer is success; a redirect,
// a refused target and any other 4xx except 408 and 429 are permanent
// failures; the rest may be retried.
func (w *Webhooks) Post(ctx context.Context, target string, body any) error {
	u, err := CheckURL(target)
	if err != nil {
		return Permanent(err)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return Permanent(fmt.Errorf("webhook body: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(b))
	if err != nil {
		return Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Guardian-Notify/1")
	resp, err := w.client.Do(req)
	if err != nil {
		// The client's *url.Error quotes the whole URL, and a webhook's
		// path is often its secret (Slack's, for one): keep the cause only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if IsPermanent(err) {
			return Permanent(fmt.Errorf("webhook %s: %w", u.Host, err))
		}
		return fmt.Errorf("webhook %s: %w", u.Host, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch s := resp.StatusCode; {
	case s >= 200 && s < 300:
		return nil
	case s >= 300 && s < 400:
		return Permanent(fmt.Errorf("webhook %s answered %d: redirects are not followed", u.Host, s))
	case s >= 400 && s < 500 && s != http.StatusRequestTimeout && s != http.StatusTooManyRequests:
		return Permanent(fmt.Errorf("webhook %s answered %d", u.Host, s))
	default:
		return fmt.Errorf("webhook %s answered %d", u.Host, s)
	}
}
