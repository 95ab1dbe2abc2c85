package function

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/session"
)

// process is one running copy of a function binary with its own socket,
// connection pool and proxy.
type process struct {
	cmd     *exec.Cmd
	socket  string
	started time.Time
	done    chan struct{} // closed when the binary has exited
	proxy   *httputil.ReverseProxy
	tr      *http.Transport

	stopOnce sync.Once
	stopping bool // guarded by the instance's mutex

	// silent counts requests in a row that reached the process whole
	// and timed out before it answered (instance.silentTimeout); probing
	// is set while a probe of it runs.
	silent  atomic.Int32
	probing atomic.Bool
}

// probe asks p for fnserve.ProbePath over a connection of its own and
// reports an error unless an answer's header comes within wait, or if the
// answer says handlers are stuck. No handler runs for the path (it is not
// in canonical form): an answer shows the process serving, not a handler
// done. fnserve answers it 503 with fnserve.StuckHeader when handlers are
// still running long past their request's deadline (fnserve.DeadlineHeader:
// deadlocked, or blocked where nothing will wake them): its server
// answers, but it serves nothing that needs what they hold.
func (p *process) probe(wait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://function"+fnserve.ProbePath, nil)
	if err != nil {
		return err
	}
	req.Close = true // a connection of its own, not one a stuck request holds
	resp, err := p.tr.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if n := resp.Header.Get(fnserve.StuckHeader); resp.StatusCode == http.StatusServiceUnavailable && n != "" {
		return fmt.Errorf("%w: %.10s handlers still running long past their request's deadline", errStuck, n)
	}
	return nil
}

// errStuck is a probe's answer that handlers are stuck.
var errStuck = errors.New("handlers stuck")

// callCtxKey carries a request's *proxyCall to the proxy's Rewrite and
// ErrorHandler.
type callCtxKey struct{}

// proxyCall is what one request's proxying shares with the proxy's hooks:
// the error, which the handler returns to Caddy instead of the proxy
// writing a response itself, and the route's timeout for the function
// (fnserve.DeadlineHeader), prebuilt per route so that sending it
// allocates nothing.
type proxyCall struct {
	err      error
	timeLeft []string
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

type proxyBufferPool struct{}

func (proxyBufferPool) Get() []byte  { return *(bufPool.Get().(*[]byte)) }
func (proxyBufferPool) Put(b []byte) { bufPool.Put(&b) }

// pooledConn is a connection to a function that copies request bodies
// through bufPool. http.Transport hands the part of a body past its 4 KiB
// write buffer to the connection's ReadFrom; a unix socket has none, so
// io.Copy allocated a buffer for every request with a body (a ~4 KB
// snapshot: 3.4 KB each, 14% of the bytes Caddy allocated under ingest
// load). It also counts the bytes written to the function (sendWatch).
type pooledConn struct {
	net.Conn
	written atomic.Int64
}

func (c *pooledConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *pooledConn) ReadFrom(r io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	n, err := io.CopyBuffer(c.Conn, r, *bp) // a unix socket has no ReadFrom to call back into
	c.written.Add(n)
	return n, err
}

// sendWatch tells whether any byte of a request reached a function: the
// transport names each connection it uses (GotConn), and a connection
// counts what was written on it. A request written into the transport's
// buffer but refused at the socket (a process that just died) reached
// nothing; one the socket took may have been read and acted on.
type sendWatch struct {
	conn *pooledConn
	base int64 // conn's count when this request got it
	sent bool
}

func (s *sendWatch) gotConn(info httptrace.GotConnInfo) {
	s.settle()
	c, ok := info.Conn.(*pooledConn)
	if !ok {
		s.conn, s.sent = nil, true // not ours to count: assume it was sent
		return
	}
	s.conn, s.base = c, c.written.Load()
}

// settle records whether the current connection took any byte.
func (s *sendWatch) settle() {
	if s.conn != nil && s.conn.written.Load() > s.base {
		s.sent = true
	}
}

// reached reports whether any byte of the request was written to a
// function's socket, on any connection the transport used for it.
func (s *sendWatch) reached() bool {
	s.settle()
	return s.sent
}

// startProcess creates a listening socket in dir, starts bin with it and a
// readiness pipe, and waits until the binary says it is ready, it exits, or
// timeout passes. No caller's context cuts it short: a start ended because
// the request that asked for it went away would count as a crash, and a
// client cancelling cold starts on purpose could push the backoff past
// the start timeout for everyone.
func startProcess(cfg *spec, log *zap.Logger, serverErrors *prometheus.CounterVec) (*process, error) {
	begin := time.Now() // cold start counts from here: socket, exec, readiness
	socket, err := socketName(cfg.name, socketSeq.Add(1))
	if err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on function socket: %w", err)
	}
	// The child keeps the socket; our copy closes below.
	lnFile, err := ln.File()
	_ = ln.Close()
	if err != nil {
		return nil, fmt.Errorf("function socket file: %w", err)
	}
	defer lnFile.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("readiness pipe: %w", err)
	}
	defer readyR.Close()
	// The function's settings (its secrets among them) are not in its
	// environment: a process just started is dumpable until its own code
	// seals it, and meanwhile every process of its user (every function)
	// may read /proc/<pid>/environ, reopen its pipes through
	// /proc/<pid>/fd, or trace it. They go over a socket pair (which
	// /proc cannot reopen), and only once the function has said, on that
	// socket, that it is sealed: nothing secret is in the process before.
	settingsMine, settingsTheirs, err := socketPair()
	if err != nil {
		readyW.Close()
		return nil, fmt.Errorf("settings socket: %w", err)
	}
	defer settingsTheirs.Close()

	cmd := exec.Command(cfg.bin)
	cmd.Env = []string{
		fnserve.DefaultPath,
		fnserve.EnvListenFD + "=3",
		fnserve.EnvReadyFD + "=4",
		fnserve.EnvSettingsFD + "=5",
		fnserve.EnvName + "=" + cfg.name,
	}
	cmd.ExtraFiles = []*os.File{lnFile, readyW, settingsTheirs}
	cmd.Dir = cfg.socketDir
	// Own process group (a terminal's ^C goes to Caddy, which then stops
	// us in order) and death with Caddy if Caddy is killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		readyW.Close()
		settingsMine.Close()
		return nil, fmt.Errorf("start %s: %w", cfg.bin, err)
	}
	readyW.Close()
	settingsTheirs.Close()
	// Sent once the function says it is sealed. A function that exits
	// (or is killed at the start timeout) first ends the wait with EOF;
	// the readiness wait below reports it.
	go func() {
		defer settingsMine.Close()
		var b [1]byte
		if n, _ := settingsMine.Read(b[:]); n != 1 || b[0] != fnserve.SealedByte {
			return
		}
		_, _ = settingsMine.Write(fnserve.EncodeSettings(cfg.env))
	}()
	p := &process{cmd: cmd, socket: socket, started: begin, done: make(chan struct{})}
	var logs sync.WaitGroup
	logs.Add(2)
	go forwardLog(&logs, log, stdout)
	go forwardLog(&logs, log, stderr)
	go func() {
		logs.Wait() // Wait must not run before the pipes are drained
		_ = cmd.Wait()
		close(p.done)
	}()

	ready := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := readyR.Read(b[:])
		ready <- err
	}()
	timer := time.NewTimer(cfg.startTimeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if err != nil {
			// EOF without a byte: the binary closed the pipe or exited.
			p.kill()
			<-p.done
			return nil, fmt.Errorf("%w: exited before it was ready (%s)", errNotReady, exitText(cmd))
		}
	case <-timer.C:
		p.kill()
		return nil, fmt.Errorf("%w: not ready within %s", errNotReady, cfg.startTimeout)
	}

	p.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := dialOwn(ctx, socket)
			if err != nil {
				return nil, err
			}
			return &pooledConn{Conn: c}, nil
		},
		MaxIdleConns:          cfg.maxConcurrent,
		MaxIdleConnsPerHost:   cfg.maxConcurrent,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // the request timeout bounds it
		DisableCompression:    true,
	}
	p.proxy = &httputil.ReverseProxy{
		Rewrite:    rewrite(cfg.name),
		Transport:  p.tr,
		BufferPool: proxyBufferPool{},
		ErrorLog:   nil,
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode >= 500 {
				serverErrors.WithLabelValues(problemCode(resp)).Inc()
			}
			return reportAuthFailure(resp)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if call, ok := r.Context().Value(callCtxKey{}).(*proxyCall); ok {
				call.err = err
			}
		},
	}
	return p, nil
}

var errNotReady = errors.New("function did not become ready")

// errForeignSocket: a function's socket name answered from a socket this
// runtime did not make.
var errForeignSocket = errors.New("function socket taken over")

// dialOwn connects to the function socket named socket, refusing one this
// process did not make: the socket Caddy made reports Caddy as its
// listener. An abstract name has no permissions, so once a function's
// process has died, another user of the host could bind its name before
// the runtime notices, and be sent its requests.
func dialOwn(ctx context.Context, socket string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	if pid, uid, ok := fnserve.PeerCred(c); !ok || pid != os.Getpid() || uid != os.Getuid() {
		_ = c.Close()
		return nil, fmt.Errorf("%w: %s (listener pid %d, uid %d)", errForeignSocket, socket, pid, uid)
	}
	return c, nil
}

// varAuthFailure mirrors auth.VarFailure (importing auth would tie the
// modules).
const varAuthFailure = "guardian.auth_failure"

// problemCode is the code of the problem+json resp carries, read from its
// first maxProblem bytes, which are then put back in front of the rest of
// the body: one of problemCodes, "none" for another kind of body, or
// "other" for a code not among them or not readable. A function, which
// may be compromised, thus cannot add series to the metric. Only 5xx
// answers are read: the cost is on the failure path alone.
func problemCode(resp *http.Response) string {
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != problem.ContentType {
		return "none"
	}
	size := int64(maxProblem)
	if resp.ContentLength >= 0 && resp.ContentLength < size {
		size = resp.ContentLength
	}
	buf := make([]byte, size)
	n, _ := io.ReadFull(resp.Body, buf) // a read error recurs on the body's next read
	buf = buf[:n]
	resp.Body = readCloser{io.MultiReader(bytes.NewReader(buf), resp.Body), resp.Body}
	var doc struct {
		Code string `json:"code"`
	}
	if json.Unmarshal(buf, &doc) != nil || !slices.Contains(problemCodes, doc.Code) {
		return "other"
	}
	return doc.Code
}

// maxProblem bounds the bytes of a 5xx answer read for its code; the
// problems functions write are a few hundred.
const maxProblem = 4 << 10

// problemCodes are the codes of the 5xx problems functions answer
// (functions/, shared/fnserve), each a series of
// guardian_function_server_error_answers_total from the start.
var problemCodes = []string{"busy", "dependency_down", "handlers_stuck", "internal_error", "keys_unavailable", "storage_unavailable", "unavailable"}

// readCloser reads from one reader and closes another.
type readCloser struct {
	io.Reader
	io.Closer
}

// reportAuthFailure takes a function's report of a failed credential check
// (identity.HeaderAuthFailure) off its answer and sets it where
// guardian_auth sets its own failures, for the ip rate-limit tier and the
// audit row. A failure guardian_auth found first stands; a reason that is
// not a plain word is dropped.
func reportAuthFailure(resp *http.Response) error {
	reason, ok := resp.Header[identity.HeaderAuthFailure]
	if !ok {
		return nil
	}
	delete(resp.Header, identity.HeaderAuthFailure)
	ctx := resp.Request.Context()
	if len(reason) != 1 || !identity.ValidFailureReason(reason[0]) {
		return nil
	}
	if prev, _ := caddyhttp.GetVar(ctx, varAuthFailure).(string); prev == "" {
		caddyhttp.SetVar(ctx, varAuthFailure, reason[0])
	}
	return nil
}

// socketPair returns the two ends of a connected unix stream socket pair,
// close-on-exec (ExtraFiles clears it on the child's copy).
func socketPair() (mine, theirs *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "settings"), os.NewFile(uintptr(fds[1]), "settings (function)"), nil
}

// socketSeq numbers process starts across every instance of this Caddy
// process, so that no two processes (an old and a new instance's, across
// a reload) are given one name.
var socketSeq atomic.Uint64

// socketName names a process's socket in the abstract namespace: there is
// no file a function (which runs as Caddy's user) could rename another
// function's socket over, or unlink, and with no socket of its own making
// (shared/fnserve) it cannot bind or reach one. The random part keeps
// other users of the host from taking the name first; the function's own
// SO_PEERCRED check refuses their connections.
func socketName(name string, seq uint64) (string, error) {
	if len(name) > 24 {
		name = name[:24]
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("function socket name: %w", err)
	}
	return fmt.Sprintf("@guardian-fn/%s.%d.%d.%x", name, os.Getpid(), seq, r), nil
}

// rewrite prepares the request a function receives: addressed to the
// function, with every Guardian-* header and every trailer the client sent
// removed, and the caller's key or session cookie too (stripCredentials),
// and the edge's own identity, client address, request id and deadline
// set in their place.
// (ReverseProxy's Rewrite mode already drops hop-by-hop, Forwarded and
// X-Forwarded-* headers from the client.)
func rewrite(name string) func(*httputil.ProxyRequest) {
	return func(pr *httputil.ProxyRequest) {
		pr.Out.URL.Scheme = "http"
		pr.Out.URL.Host = name
		pr.Out.Host = pr.In.Host
		h := pr.Out.Header
		identity.Strip(h)
		stripCredentials(h)
		// Caddy's server has answered the client's 100-continue already.
		// Passed on, it makes the function answer 100 too, and the proxy
		// clears the response headers when it relays a 1xx: the edge's
		// security headers and request id would be lost.
		delete(h, "Expect")
		// Request trailers are the client's headers after the body, which
		// identity.Strip never saw (a trailer Guardian-Identity would
		// reach the function beside the edge's header). Functions read
		// none, so none is passed on.
		pr.Out.Trailer = nil
		ctx := pr.In.Context()
		id, _ := caddyhttp.GetVar(ctx, identity.VarKey).(*identity.Identity)
		ip, _ := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string)
		if ip == "" {
			ip, _, _ = net.SplitHostPort(pr.In.RemoteAddr)
		}
		reqID, _ := caddyhttp.GetVar(ctx, identity.RequestIDVarKey).(string)
		if reqID == "" {
			reqID = identity.NewRequestID()
		}
		identity.SetEdgeHeaders(h, id, ip, reqID)
		// How long this edge waits for the answer, for the function's
		// count of stuck handlers (fnserve.ProbePath).
		if call, ok := ctx.Value(callCtxKey{}).(*proxyCall); ok && call.timeLeft != nil {
			h[fnserve.DeadlineHeader] = call.timeLeft
		}
	}
}

// stripCredentials removes the caller's own credentials, which the edge
// has checked and turned into identity headers: the Authorization header
// (an API or collector key) and the session cookie. A function gets who
// the caller is, never a secret that would let it act as the caller
// through the edge; a compromised public function (healthz) would
// otherwise collect every key and session token sent to it. Other
// cookies (a sign-in's OpenID state, a second factor's challenge) pass.
func stripCredentials(h http.Header) {
	delete(h, "Authorization")
	cookies := h.Values("Cookie")
	if !slices.ContainsFunc(cookies, func(line string) bool { return strings.Contains(line, session.CookieName) }) {
		return // nothing to take out: no allocation on every request
	}
	var kept []string
	for _, line := range cookies {
		for _, c := range strings.Split(line, ";") {
			c = strings.TrimSpace(c)
			name, _, _ := strings.Cut(c, "=")
			if c != "" && strings.TrimSpace(name) != session.CookieName {
				kept = append(kept, c)
			}
		}
	}
	if len(kept) == 0 {
		delete(h, "Cookie")
		return
	}
	h.Set("Cookie", strings.Join(kept, "; "))
}

// stop asks the binary to drain and exit, and kills it after grace.
func (p *process) stop(grace time.Duration) {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		go func() {
			t := time.NewTimer(grace)
			defer t.Stop()
			select {
			case <-p.done:
			case <-t.C:
				p.kill()
			}
			if p.tr != nil {
				p.tr.CloseIdleConnections()
			}
		}()
	})
}

func (p *process) kill() {
	// The whole group: a function may have started helpers of its own.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// waitExit waits up to d for the binary to have exited.
func (p *process) waitExit(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func exitText(cmd *exec.Cmd) string {
	if cmd.ProcessState == nil {
		return "still running"
	}
	return cmd.ProcessState.String()
}

// maxLogLine bounds one line of a function's output in Caddy's log; the
// rest of a longer line is dropped.
const maxLogLine = 256 << 10

// forwardLog copies a function's output into Caddy's log, one entry per
// line. JSON lines (what fnserve writes) are kept as structured entries.
// It reads to the end whatever comes: a reader that stopped (at a line
// too long) would leave the pipe full and the function blocked on its
// next log write, alive but answering nothing.
func forwardLog(wg *sync.WaitGroup, log *zap.Logger, r io.Reader) {
	defer wg.Done()
	br := bufio.NewReaderSize(r, 4096)
	var line []byte
	cut := false
	for {
		chunk, err := br.ReadSlice('\n')
		// The line end does not count against the bound.
		if room := maxLogLine - len(line); len(bytes.TrimSuffix(chunk, []byte("\n"))) > room {
			chunk, cut = chunk[:room], true
		}
		line = append(line, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(line) > 0 {
			logLine(log, line, cut)
		}
		line, cut = line[:0], false
		if err != nil {
			return
		}
	}
}

// logLine logs one line of a function's output, without its line end, at
// the level the function gave it: a Caddy logging at WARN must still show
// a function's warnings and errors (why it stopped at start, a revocation
// that failed). A line that is not a JSON entry of fnserve's logger (a
// panic's trace, the runtime's fatal error) is logged at WARN, as is a
// line cut short, whose level cannot be read.
func logLine(log *zap.Logger, line []byte, cut bool) {
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	switch {
	case cut:
		log.Warn("function output", zap.String("line", string(line)), zap.Bool("truncated", true))
	case json.Valid(line):
		if ce := log.Check(lineLevel(line), "function output"); ce != nil {
			ce.Write(zap.Reflect("entry", json.RawMessage(append([]byte(nil), line...))))
		}
	default:
		log.Warn("function output", zap.String("line", string(line)))
	}
}

// lineLevel is the level of a function's JSON log line (zap's "level"
// field); INFO when it names none that zap knows, and ERROR for the levels
// above it (a DPANIC, PANIC or FATAL line is the function's last).
func lineLevel(line []byte) zapcore.Level {
	var e struct {
		Level string `json:"level"`
	}
	if json.Unmarshal(line, &e) != nil {
		return zapcore.InfoLevel
	}
	l, err := zapcore.ParseLevel(e.Level)
	switch {
	case err != nil:
		return zapcore.InfoLevel
	case l > zapcore.ErrorLevel:
		return zapcore.ErrorLevel
	}
	return l
}
