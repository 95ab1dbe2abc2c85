package chbackup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// chClient talks to ClickHouse's HTTP interface with plain net/http: a
// query is POSTed (in the body, or in the query parameter when the body
// carries data) and the answer streams back as raw bytes. clickhouse-go's
// own HTTP protocol sends settings that ClickHouse 18.16 refuses.
type chClient struct {
	base           string
	user, password string
	hc             *http.Client
	// idle bounds how long an answer may send nothing while it is read.
	idle time.Duration
}

// chIdleTimeout is chClient.idle: ClickHouse streams a dump in blocks of
// at most a megabyte, so minutes without a byte mean a server or a
// connection that hangs, which would otherwise hold the run until its
// time limit. Tests shorten it.
var chIdleTimeout = 10 * time.Minute

// chKeepAlive is how long an idle connection to ClickHouse is kept: under
// the server's default keep_alive_timeout, 3 s.
const chKeepAlive = 2 * time.Second

func newCHClient(cfg Config) *chClient {
	return &chClient{
		base:     strings.TrimSuffix(cfg.HTTPURL, "/") + "/",
		user:     cfg.ClickHouse.User,
		password: cfg.ClickHouse.Password,
		idle:     chIdleTimeout,
		hc: &http.Client{Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			ResponseHeaderTimeout: 5 * time.Minute,
			DisableCompression:    true,
			MaxIdleConnsPerHost:   4,
			// ClickHouse closes a keep-alive connection idle for its
			// keep_alive_timeout (3 s by default); a statement sent on one
			// it is closing fails with EOF, and Go sends no POST again.
			// The client lets go of them first.
			IdleConnTimeout: chKeepAlive,
		},
			// A redirect is not followed: Go would send the password header
			// (it strips only Authorization and Cookie) and the data on to
			// wherever it points. ClickHouse never redirects; a proxy that
			// did is answered as an error.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// chError is an error ClickHouse answered with: the server refused the
// statement, as opposed to not being reachable.
type chError struct {
	Status int
	Msg    string
}

func (e *chError) Error() string {
	return fmt.Sprintf("clickhouse answered %d: %s", e.Status, e.Msg)
}

// post sends query, with body as the data of an INSERT when body is not
// nil, and returns the answer of status 200 for the caller to read and
// close. Reading the answer fails once it has sent nothing for c.idle.
func (c *chClient) post(ctx context.Context, query string, body io.Reader) (*http.Response, error) {
	u := c.base
	ctx, cancel := context.WithCancel(ctx)
	var sent *sendBody // the data of an INSERT; a query alone is one write
	if body == nil {
		body = strings.NewReader(query)
	} else {
		u += "?" + url.Values{"query": {query}}.Encode()
		sent = newSendBody(body, c.idle, cancel)
		defer sent.stop()
		body = sent
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("X-ClickHouse-User", c.user)
	if c.password != "" {
		req.Header.Set("X-ClickHouse-Key", c.password)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		if sent != nil && sent.fired.Load() {
			return nil, fmt.Errorf("clickhouse took nothing of the data for %v: the insert was abandoned", c.idle)
		}
		return nil, err
	}
	resp.Body = newIdleBody(resp.Body, c.idle, cancel)
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := strings.TrimSpace(string(b))
		if len(msg) > 400 {
			msg = msg[:400] + "..."
		}
		return nil, &chError{Status: resp.StatusCode, Msg: msg}
	}
	return resp, nil
}

// sendBody is the data of an INSERT, whose request is cancelled once the
// transport has asked for no more of it for limit: ClickHouse stopped
// reading (or the connection is half-open), and the write would block
// until the run's time limit. Time spent inside a Read (the source: a
// blob fetched and decrypted, under its own watchdog) does not count.
type sendBody struct {
	r      io.Reader
	limit  time.Duration
	cancel context.CancelFunc
	timer  *time.Timer
	fired  atomic.Bool
}

func newSendBody(r io.Reader, limit time.Duration, cancel context.CancelFunc) *sendBody {
	b := &sendBody{r: r, limit: limit, cancel: cancel}
	b.timer = time.AfterFunc(limit, func() {
		b.fired.Store(true)
		b.cancel()
	})
	return b
}

func (b *sendBody) Read(p []byte) (int, error) {
	b.timer.Stop()
	n, err := b.r.Read(p)
	if err == nil {
		b.timer.Reset(b.limit)
	}
	return n, err // at EOF (or an error) the body is done: the answer's own timeouts follow
}

// stop ends the watch once the request is answered.
func (b *sendBody) stop() { b.timer.Stop() }

// idleBody is an answer whose reads fail once one has waited limit for a
// byte; cancel, which it calls then, must abort the request. Time spent
// between reads (a slow target downstream) does not count.
type idleBody struct {
	rc     io.ReadCloser
	limit  time.Duration
	cancel context.CancelFunc
	timer  *time.Timer
	fired  atomic.Bool
}

func newIdleBody(rc io.ReadCloser, limit time.Duration, cancel context.CancelFunc) *idleBody {
	b := &idleBody{rc: rc, limit: limit, cancel: cancel}
	b.timer = time.AfterFunc(limit, b.expire)
	b.timer.Stop()
	return b
}

func (b *idleBody) expire() {
	b.fired.Store(true)
	b.cancel()
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.limit)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	if err != nil && b.fired.Load() {
		err = fmt.Errorf("clickhouse sent nothing for %v: the answer was abandoned", b.limit)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}

// exec runs a statement without a result.
func (c *chClient) exec(ctx context.Context, query string) error {
	resp, err := c.post(ctx, query, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// insert runs INSERT INTO table FORMAT Native with data as the body.
func (c *chClient) insert(ctx context.Context, table string, data io.Reader) error {
	resp, err := c.post(ctx, "INSERT INTO "+table+" FORMAT Native", data)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// rows runs a query and decodes its JSONEachRow answer into a slice of T.
// Select strings (toString for numbers): 64-bit integers come quoted.
func rows[T any](ctx context.Context, c *chClient, query string) ([]T, error) {
	resp, err := c.post(ctx, query+" FORMAT JSONEachRow", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out []T
	dec := json.NewDecoder(io.LimitReader(resp.Body, 256<<20))
	for {
		var v T
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("clickhouse answer: %w", err)
		}
		out = append(out, v)
	}
}

// one runs a query whose answer is one row.
func one[T any](ctx context.Context, c *chClient, query string) (T, error) {
	var zero T
	rs, err := rows[T](ctx, c, query)
	if err != nil {
		return zero, err
	}
	if len(rs) != 1 {
		return zero, fmt.Errorf("clickhouse answered %d rows, expected one", len(rs))
	}
	return rs[0], nil
}

// quoteIdent quotes a ClickHouse identifier with back quotes.
func quoteIdent(s string) string {
	return "`" + strings.NewReplacer(`\`, `\\`, "`", "\\`").Replace(s) + "`"
}

// quoteString quotes a ClickHouse string literal.
func quoteString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
