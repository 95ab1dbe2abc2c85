// Package function is the guardian_function Caddy module: Guardian's
// serverless runtime. A request to a function's route starts the function
// binary on first use, waits for it to say it is ready on a private unix
// socket, proxies to it, keeps it warm while it is used and stops it when
// idle. A crash costs the request in flight a 502 and the next request a
// restart, with backoff.
//
// Processes live in a package-wide caddy.UsagePool keyed by the function's
// full spec, so a config reload that keeps a function keeps its process,
// and the last config that drops it stops it.
package function

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/clientip"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// pool holds the running instances, shared across config reloads.
var pool = caddy.NewUsagePool()

// Handler routes requests to one function binary.
type Handler struct {
	// Name identifies the function in logs, metrics and socket names.
	Name string `json:"name"`
	// Bin is the path of the function binary.
	Bin string `json:"bin"`
	// Env lists the environment variables copied from Caddy's environment
	// to the function: it gets these and nothing else (least privilege).
	// "NAME=FROM" gives the function NAME with the value of Caddy's FROM:
	// each function reads GUARDIAN_PG_APP_DSN, and each route hands it the
	// DSN of the function's own database role.
	Env []string `json:"env,omitempty"`
	// SocketDir is the functions' working directory, created with mode
	// 0700. Their sockets are not in it: they are abstract (no file a
	// function could rename over another's; see socketName). Default:
	// $TMPDIR/guardian-functions-<uid>.
	SocketDir string `json:"socket_dir,omitempty"`
	// StartTimeout bounds a cold start. Default: 10s.
	StartTimeout caddy.Duration `json:"start_timeout,omitempty"`
	// IdleTimeout stops a function nobody used for this long; 0 keeps it
	// running. Default: 5m.
	IdleTimeout *caddy.Duration `json:"idle_timeout,omitempty"`
	// Timeout bounds one request, answer included. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// MaxConcurrent bounds requests in flight to the function. Default: 64.
	// Once half are taken, one holder may have an eighth of them
	// (contendedShare).
	MaxConcurrent int `json:"max_concurrent,omitempty"`
	// QueueTimeout bounds the wait for a free slot. Default: 5s.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`
	// BufferBody, when set, reads a request's whole body (at most this
	// many bytes; more is 413) before the request takes one of the
	// function's MaxConcurrent slots. On a public route a client sending
	// its body a byte a second would otherwise hold a slot until the
	// server's read_body timeout, and a few such clients hold them all.
	// Default 0: bodies stream to the function. All the bodies held at once
	// for the function's routes are bounded too (maxBuffered), charged as
	// their bytes arrive, and one holder (a customer, or an address without
	// a credential, an IPv6 one by its /48) may hold a sixteenth of it:
	// past either a request is 503, so memory stays bounded, only bytes
	// actually sent count, not what a slow client declares, and no few
	// clients keep the others out.
	BufferBody int64 `json:"buffer_body,omitempty"`
	// MinWarm is how many processes to keep running even when idle: 0
	// (scale to zero, the default) or 1. A function is one process that
	// serves its requests concurrently, so more than one adds nothing.
	MinWarm int `json:"min_warm,omitempty"`

	key         string
	timeLeft    []string // fnserve.DeadlineHeader's value: Timeout in ms (proxyCall)
	buffered    *budget  // bytes of buffered bodies held (BufferBody)
	bufferTotal int64    // its size; maxBuffered unless a test sets it
	inst        *instance
	metrics     *fnMetrics
	sem         chan struct{}
	log         *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.guardian_function",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in defaults, prepares the functions' directory and joins (or
// creates) the function's shared instance.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger().With(zap.String("function", h.Name))
	if h.SocketDir == "" {
		h.SocketDir = filepath.Join(os.TempDir(), fmt.Sprintf("guardian-functions-%d", os.Getuid()))
	}
	if h.StartTimeout <= 0 {
		h.StartTimeout = caddy.Duration(10 * time.Second)
	}
	if h.IdleTimeout == nil {
		d := caddy.Duration(5 * time.Minute)
		h.IdleTimeout = &d
	}
	if h.Timeout <= 0 {
		h.Timeout = caddy.Duration(30 * time.Second)
	}
	if h.MaxConcurrent <= 0 {
		h.MaxConcurrent = 64
	}
	if h.QueueTimeout <= 0 {
		h.QueueTimeout = caddy.Duration(5 * time.Second)
	}
	if err := h.Validate(); err != nil {
		return err
	}
	if err := privateDir(h.SocketDir); err != nil {
		return err
	}
	bin, err := filepath.Abs(h.Bin)
	if err != nil {
		return fmt.Errorf("guardian_function %s: bin: %w", h.Name, err)
	}
	env, unset := readEnv(h.Env, os.LookupEnv)
	unset.log(h.log)
	s := spec{
		name:          h.Name,
		bin:           bin,
		env:           env,
		socketDir:     h.SocketDir,
		startTimeout:  time.Duration(h.StartTimeout),
		idleTimeout:   time.Duration(*h.IdleTimeout),
		stopGrace:     10 * time.Second,
		maxConcurrent: h.MaxConcurrent,
		warm:          h.MinWarm > 0,
	}
	appIface, err := ctx.App("guardian_functions")
	if err != nil {
		return fmt.Errorf("guardian_function %s: %w", h.Name, err)
	}
	key := fmt.Sprintf("%#v", s)
	if h.inst, err = appIface.(*App).instance(key, s, h.log); err != nil {
		return err
	}
	h.key = key
	h.inst.noteTimeout(time.Duration(h.Timeout))
	h.timeLeft = []string{strconv.FormatInt(time.Duration(h.Timeout).Milliseconds(), 10)}[:1:1]
	h.metrics = h.inst.metrics
	// Shared by every route of this function: one process, one bound.
	h.sem = h.inst.slots
	if h.BufferBody > 0 {
		if h.bufferTotal == 0 {
			h.bufferTotal = maxBuffered
		}
		var bound int64
		h.buffered, bound = h.inst.bodyBudget(max(h.bufferTotal, h.BufferBody+bufferChunk))
		if need := h.BufferBody + bufferChunk; need > bound {
			// A body this route accepts could never fit: every one would
			// be 503 function_busy.
			return fmt.Errorf("guardian_function %s: buffer_body %d bytes does not fit the bound on bodies buffered for this function (%d bytes, set by its first route); give every route of the function a buffer_body within it", h.Name, h.BufferBody, bound-bufferChunk)
		}
	}
	return nil
}

// Validate rejects a config that cannot work, naming the field.
func (h *Handler) Validate() error {
	if h.Name == "" || strings.ContainsAny(h.Name, "/\\ \t") {
		return fmt.Errorf("guardian_function: name must be a non-empty word, got %q", h.Name)
	}
	if h.Bin == "" {
		return fmt.Errorf("guardian_function %s: bin is required", h.Name)
	}
	st, err := os.Stat(h.Bin)
	if err != nil {
		return fmt.Errorf("guardian_function %s: bin: %w", h.Name, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("guardian_function %s: bin %s is not an executable file", h.Name, h.Bin)
	}
	if h.MinWarm < 0 || h.MinWarm > 1 {
		return fmt.Errorf("guardian_function %s: min_warm must be 0 or 1 (one process serves all requests), got %d", h.Name, h.MinWarm)
	}
	// The Caddyfile's bound, checked here too for a JSON config: past it
	// the body's arithmetic would overflow and its reads never end.
	if h.BufferBody < 0 || h.BufferBody > maxBufferBody {
		return fmt.Errorf("guardian_function %s: buffer_body must be from 0 (off) to 1GiB, got %d", h.Name, h.BufferBody)
	}
	if h.MaxConcurrent < 0 {
		return fmt.Errorf("guardian_function %s: max_concurrent must not be negative, got %d", h.Name, h.MaxConcurrent)
	}
	seen := map[string]bool{}
	for _, entry := range h.Env {
		name, from, renamed := strings.Cut(entry, "=")
		if !validEnvName(name) || (renamed && !validEnvName(from)) {
			return fmt.Errorf("guardian_function %s: env: %q is not NAME or NAME=FROM", h.Name, entry)
		}
		// Named twice, which value the function got would depend on
		// their order once sorted, not on the config.
		if seen[name] {
			return fmt.Errorf("guardian_function %s: env: %s is named twice", h.Name, name)
		}
		seen[name] = true
	}
	return nil
}

// maxBufferBody bounds buffer_body.
const maxBufferBody = 1 << 30

// Cleanup releases this config's hold on the instance; the last one out
// stops the process.
func (h *Handler) Cleanup() error {
	if h.key != "" {
		key := h.key
		// Once only: a second release would drop another config's hold.
		h.key = ""
		_, err := pool.Delete(key)
		return err
	}
	return nil
}

// ServeHTTP proxies the request to the function, starting it if needed.
// Failures are returned as problems for the error route to render.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	start := time.Now()
	outcome := outcomeProxied
	defer func() { h.metrics.duration[outcome].Observe(time.Since(start).Seconds()) }()
	// The proxy drops query parameters it cannot parse (a bad %-escape, a
	// ';'), so the function would see a request without them: a filter
	// silently missing, its answer wrong. Refuse such a query instead.
	// The check allocates nothing; only a refusal parses the query, for
	// the reason.
	if proxyWouldCut(r.URL.RawQuery) {
		detail := "the query string cannot be parsed"
		if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
			detail += ": " + err.Error()
		}
		outcome = outcomeRefused
		return caddyhttp.Error(http.StatusBadRequest, problem.New(http.StatusBadRequest, "invalid_query", detail))
	}
	if h.BufferBody > 0 {
		release, err := h.bufferBody(w, r, &outcome)
		defer release()
		if err != nil {
			return err
		}
	}
	release, why := h.takeContended(r)
	if why != taken {
		outcome = outcomeBusyClient
		if why == overTotal {
			outcome = outcomeBusy // everyone's slots together, not this client's share
		}
		w.Header().Set("Retry-After", "1")
		return caddyhttp.Error(http.StatusServiceUnavailable,
			problem.New(http.StatusServiceUnavailable, "function_busy", "too many of your requests are in flight; try again shortly"))
	}
	defer release()
	if err := h.acquireSlot(r.Context()); err != nil {
		outcome = outcomeCanceled // the client went away while it waited
		if err == errBusy {
			outcome = outcomeBusy
			// Nothing is written yet: the header goes out with the problem.
			w.Header().Set("Retry-After", "1")
			return caddyhttp.Error(http.StatusServiceUnavailable,
				problem.New(http.StatusServiceUnavailable, "function_busy", "too many requests in flight; try again shortly"))
		}
		return err
	}
	defer func() { <-h.sem }()

	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.Timeout))
	defer cancel()
	call := &proxyCall{timeLeft: h.timeLeft}
	ctx = context.WithValue(ctx, callCtxKey{}, call)
	req := r.WithContext(ctx)
	var body *trackedBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &trackedBody{rc: r.Body}
		req.Body = body
	}
	var p *process
	answered := false
	for attempt := 0; ; attempt++ {
		var err error
		p, err = h.inst.acquire(ctx)
		if err != nil {
			retry := "1" // starting, or stopping for a reload: seconds
			var b errBackoff
			if errors.As(err, &b) {
				retry = strconv.Itoa(int(b.retryAfter.Seconds()) + 1)
			}
			w.Header().Set("Retry-After", retry)
			outcome = outcomeUnavailable
			return caddyhttp.Error(http.StatusServiceUnavailable,
				problem.New(http.StatusServiceUnavailable, "function_unavailable", "the service is starting or recovering; try again shortly"))
		}
		call.err = nil
		var watch sendWatch
		answered = h.proxy(p, w, req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: watch.gotConn})))
		// A process that died a moment ago refuses the connection before
		// its exit is noticed. Nothing reached it, so the request is safe
		// to send once more, to a fresh process. The error alone cannot
		// tell: the transport itself sends a request again on a new
		// connection when a reused one fails after the request was written
		// (GET, or any bodyless request with an Idempotency-Key header,
		// which the client chooses), and that second try is what a dead
		// process refuses. So only a request of which no byte reached any
		// function's socket is sent again (sendWatch): the function may
		// have acted on one it received before it died.
		if call.err != nil && attempt == 0 && !watch.reached() && ctx.Err() == nil && (body == nil || !body.read) {
			p.waitExit(time.Second)
			continue
		}
		break
	}
	if call.err == nil {
		if p.silent.Load() != 0 {
			p.silent.Store(0)
		}
		return nil
	}
	if errors.Is(call.err, context.DeadlineExceeded) && r.Context().Err() == nil {
		// Silent: the whole request reached the function, which sent
		// nothing back in time (a slow client, uploading or reading, is
		// not the function's fault). An answer cut short was an answer.
		switch {
		case answered:
			if p.silent.Load() != 0 {
				p.silent.Store(0)
			}
		case body == nil || body.eof.Load():
			h.inst.silentTimeout(p)
		}
		if n, ok := h.inst.timeoutLog.Allow(time.Now(), failLogEvery); ok {
			h.log.Warn("function timed out (logged once per 30 s)", zap.Duration("timeout", time.Duration(h.Timeout)), zap.Int64("timed_out", n))
		}
		outcome = outcomeTimeout
		return caddyhttp.Error(http.StatusGatewayTimeout,
			problem.New(http.StatusGatewayTimeout, "function_timeout", "the service took too long to answer"))
	}
	if r.Context().Err() != nil {
		// The client went away; nothing to answer.
		outcome = outcomeCanceled
		return caddyhttp.Error(499, r.Context().Err())
	}
	if n, ok := h.inst.failLog.Allow(time.Now(), failLogEvery); ok {
		h.log.Error("function request failed (logged once per 30 s)", zap.Error(call.err), zap.Int64("failed", n))
	}
	outcome = outcomeFailed
	return caddyhttp.Error(http.StatusBadGateway,
		problem.New(http.StatusBadGateway, "function_failed", "the service failed while answering; the request may be retried"))
}

// proxy sends req to p and ends the request on p, also when the proxy
// panics with http.ErrAbortHandler (the client or the function went away
// mid-body): a request never released would keep the function from ever
// being stopped for idleness.
// It reports whether the function's final status was written to w.
func (h *Handler) proxy(p *process, w http.ResponseWriter, req *http.Request) (answered bool) {
	defer h.inst.release(p)
	f := finalOnlyPool.Get().(*finalOnly)
	f.w = w
	defer func() {
		answered = f.wrote
		f.free()
	}()
	p.proxy.ServeHTTP(f, req)
	return
}

// finalOnly passes a function's answer to w without its informational
// (1xx) answers. httputil.ReverseProxy writes each 1xx with the function's
// headers in w's header map and then clears the map, and the edge's
// headers (HSTS, CSP, Request-Id, RateLimit-*) went with it; a function
// may send 103 Early Hints unasked. So the function's headers are
// gathered apart until its final status, then added to w's.
type finalOnly struct {
	w     http.ResponseWriter
	hdr   http.Header
	wrote bool
}

var finalOnlyPool = sync.Pool{New: func() any { return &finalOnly{hdr: make(http.Header, 8)} }}

// Header is the function's headers until its final status, then w's (for
// trailers).
func (f *finalOnly) Header() http.Header {
	if f.wrote {
		return f.w.Header()
	}
	return f.hdr
}

// WriteHeader drops a 1xx (101 is not written here: the proxy hijacks
// for it, see Hijack) and passes the final status with the function's
// headers added to w's.
func (f *finalOnly) WriteHeader(code int) {
	if f.wrote {
		f.w.WriteHeader(code) // superfluous: w says so
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		clear(f.hdr)
		return
	}
	f.wrote = true
	dst := f.w.Header()
	for k, vv := range f.hdr {
		if dst[k] == nil {
			dst[k] = vv // the slice is the proxy's own, never written again
		} else {
			dst[k] = append(dst[k], vv...)
		}
	}
	f.w.WriteHeader(code)
}

func (f *finalOnly) Write(b []byte) (int, error) {
	if !f.wrote {
		f.WriteHeader(http.StatusOK)
	}
	return f.w.Write(b)
}

// Unwrap lets http.ResponseController reach w (Flush).
func (f *finalOnly) Unwrap() http.ResponseWriter { return f.w }

// Hijack refuses: no function switches protocols, and a connection handed
// to one would carry its answer without the edge's headers and outlive
// its timeout and its audit row. The proxy then answers 502.
func (f *finalOnly) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errNoSwitch
}

var errNoSwitch = fmt.Errorf("function answered 101 Switching Protocols: %w", http.ErrNotSupported)

func (f *finalOnly) free() {
	clear(f.hdr)
	f.w, f.wrote = nil, false
	finalOnlyPool.Put(f)
}

// failLogEvery is how often a function's timeouts and failed requests are
// logged at most; the metrics count each one.
const failLogEvery = 30 * time.Second

// maxBuffered bounds the bytes of bodies held at once for one function's
// routes together (BufferBody), and bufferChunk is the most read before
// being charged.
const (
	maxBuffered = 64 << 20
	bufferChunk = 32 << 10
)

// bufferBody replaces r's body with its bytes, read in full (BufferBody),
// charged to h.buffered, and returns how to give them back: once the
// request is done (also on error), if not before. The new body gives them
// back itself once the function has read it to its end: from then on the
// bytes are the function's to bound (ingest's own bound, for one) while
// it answers.
func (h *Handler) bufferBody(w http.ResponseWriter, r *http.Request, outcome *string) (release func(), err error) {
	defer func() {
		if err != nil && *outcome == outcomeProxied {
			*outcome = outcomeRefused // too large, or not received in full
		}
	}()
	if r.Body == nil || r.Body == http.NoBody {
		return func() {}, nil
	}
	holder := bodyHolder(r)
	var held int64
	release = sync.OnceFunc(func() { h.buffered.give(holder, held) })
	tooLarge := caddyhttp.Error(http.StatusRequestEntityTooLarge, problem.New(http.StatusRequestEntityTooLarge, "payload_too_large",
		fmt.Sprintf("the body may be at most %d bytes", h.BufferBody)))
	if r.ContentLength > h.BufferBody {
		return release, tooLarge
	}
	var buf bytes.Buffer
	for {
		// Charged once read: a client that declares a body and sends
		// nothing (or a byte at a time) holds next to none of the bound,
		// so a few thousand idle uploads cannot keep everyone else out.
		// At most one byte past BufferBody, so that a body too large is
		// told so as soon as that byte arrives.
		n, err := io.CopyN(&buf, r.Body, min(bufferChunk, h.BufferBody+1-int64(buf.Len())))
		if n > 0 {
			if why := h.buffered.take(holder, n, h.BufferBody+bufferChunk); why != taken {
				*outcome = outcomeBufferFull
				if why == overShare {
					*outcome = outcomeBusyClient
				}
				w.Header().Set("Retry-After", "1")
				return release, caddyhttp.Error(http.StatusServiceUnavailable,
					problem.New(http.StatusServiceUnavailable, "function_busy", "too many request bodies are being received; try again shortly"))
			}
			held += n
		}
		if int64(buf.Len()) > h.BufferBody {
			return release, tooLarge
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if r.Context().Err() != nil {
				*outcome = outcomeCanceled
				return release, caddyhttp.Error(499, r.Context().Err())
			}
			// The server's read_body timeout, or a broken upload.
			return release, caddyhttp.Error(http.StatusRequestTimeout, problem.New(http.StatusRequestTimeout, "body_incomplete",
				"the request body was not received in full"))
		}
	}
	_ = r.Body.Close()
	r.Body, r.ContentLength = &heldBody{r: bytes.NewReader(buf.Bytes()), release: release}, int64(buf.Len())
	return release, nil
}

// heldBody is a buffered body sent to the function. Once read to its end
// it drops its bytes and gives back their share of the bound.
type heldBody struct {
	r       *bytes.Reader
	release func()
}

func (b *heldBody) Read(p []byte) (int, error) {
	if b.r == nil {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.r = nil
		b.release()
	}
	return n, err
}

func (b *heldBody) Close() error { return nil }

// bodyHolder is whom a buffered body is charged to: the customer the
// request's credential names, else its client's network
// (clientip.Network: an IPv6 /48, wider than the rate limiter's /64,
// since a share of the bound is worth more than a rate limit and one
// site is routinely given a /48).
func bodyHolder(r *http.Request) string {
	if id, _ := caddyhttp.GetVar(r.Context(), identity.VarKey).(*identity.Identity); id != nil && id.CustomerID != "" {
		return "c:" + id.CustomerID
	}
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if ip == "" {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		ip = host
	}
	return "a:" + clientip.Network(ip)
}

// contendedShare divides the function's slots among the holders of
// requests that come while half of them or more are taken: each may have
// an eighth of max_concurrent (at least one) of those in flight or
// waiting. A slot is held until the answer is written, so one customer,
// or one network without a credential, reading large answers slowly
// (audit exports) could otherwise hold every slot of a function that
// every customer needs. The first half is anyone's: a lone customer's
// burst on an idle function is never refused, and a request that finds
// the function less than half busy costs one channel length and nothing
// else.
const contendedShare = 8

// takeContended counts r against its holder's share when half the slots
// or more are taken, and says whether it may go on (taken) or which bound
// refused it; release ends the count.
func (h *Handler) takeContended(r *http.Request) (release func(), why budgetRefusal) {
	if len(h.sem) < cap(h.sem)/2 {
		return func() {}, taken
	}
	c := h.inst.contended
	holder := bodyHolder(r)
	if why := c.take(holder, 1, 1); why != taken {
		return nil, why
	}
	return func() { c.give(holder, 1) }, taken
}

func (h *Handler) acquireSlot(ctx context.Context) error {
	select {
	case h.sem <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(time.Duration(h.QueueTimeout))
	defer t.Stop()
	select {
	case h.sem <- struct{}{}:
		return nil
	case <-t.C:
		return errBusy
	case <-ctx.Done():
		return caddyhttp.Error(499, ctx.Err())
	}
}

// errBusy is acquireSlot's answer after QueueTimeout without a slot.
var errBusy = errors.New("function: no slot free")

// trackedBody records whether any of the request body was read, and keeps
// the transport from closing it, so an unsent request can be sent again.
type trackedBody struct {
	rc   io.ReadCloser
	read bool
	// eof: the whole body was read (to send it to the function). The
	// transport may still be reading when the handler looks.
	eof atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 || err != nil {
		b.read = true
	}
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

// Close is left to the HTTP server, which closes the original body.
func (b *trackedBody) Close() error { return nil }

// readEnv returns NAME=value for each allowed name that is set (for
// NAME=FROM, FROM's value), plus a minimal PATH; nothing else of Caddy's
// environment reaches the function. It also returns the names not set,
// split into plain names (often optional settings) and the sources of
// renames (NAME=FROM, a function's own credential, so almost always a
// mistake when missing).
func readEnv(entries []string, lookup func(string) (string, bool)) (env []string, unset unsetEnv) {
	env = []string{fnserve.DefaultPath}
	for _, entry := range entries {
		name, from, renamed := strings.Cut(entry, "=")
		if !renamed {
			from = name
		}
		if name == "PATH" {
			continue
		}
		v, ok := lookup(from)
		switch {
		case ok:
			env = append(env, name+"="+v)
		case renamed:
			unset.sources = append(unset.sources, from)
		default:
			unset.plain = append(unset.plain, name)
		}
	}
	slices.Sort(env[1:])
	return env, unset
}

// unsetEnv names the variables of a function's env lines that Caddy's
// environment lacks.
type unsetEnv struct{ plain, sources []string }

// log says which variables a function starts without, by name only: a
// source of a rename missing (GUARDIAN_PG_DSN_<NAME> not passed to Caddy)
// otherwise surfaces only as the function failing to start on a variable
// of another name.
func (u unsetEnv) log(l *zap.Logger) {
	if len(u.sources) > 0 {
		l.Warn("variables this function's env lines rename from are not set in Caddy's environment; it starts without them",
			zap.Strings("unset", u.sources))
	}
	if len(u.plain) > 0 {
		l.Info("variables named on this function's env lines are not set in Caddy's environment; it starts without them",
			zap.Strings("unset", u.plain))
	}
}

// validEnvName: letters, digits and underscores, not starting with a digit.
func validEnvName(s string) bool {
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, c := range s {
		if !(c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
			return false
		}
	}
	return true
}

// privateDir creates dir with mode 0700, or checks that an existing one is
// a real directory owned by us and closed to others.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("guardian_function: socket_dir: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("guardian_function: socket_dir: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || int(sys.Uid) != os.Getuid() {
		return fmt.Errorf("guardian_function: socket_dir %s must be a directory owned by uid %d", dir, os.Getuid())
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("guardian_function: socket_dir: %w", err)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Destructor            = (*instance)(nil)
)

// maxQueryParams is net/url's and httputil's default limit on a query's
// parameters (GODEBUG urlmaxqueryparams).
const maxQueryParams = 10000

// proxyWouldCut reports whether httputil's reverse proxy would re-encode
// q, dropping what it cannot parse: the same tests as its
// cleanQueryParams (a ';', an escape that is not %XX, too many
// parameters), without allocating.
func proxyWouldCut(q string) bool {
	if strings.Count(q, "&")+1 > maxQueryParams {
		return true
	}
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case ';':
			return true
		case '%':
			if i+2 >= len(q) || !isHex(q[i+1]) || !isHex(q[i+2]) {
				return true
			}
			i += 2
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
