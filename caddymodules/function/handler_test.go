package function

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// newHandler provisions h around the test function binary; its process is
// stopped when the test ends.
func newHandler(t *testing.T, h *Handler) *Handler {
	t.Helper()
	return provisionIn(t, testContext(t), h)
}

// provisionIn is newHandler in a given Caddy context.
func provisionIn(t testing.TB, ctx caddy.Context, h *Handler) *Handler {
	t.Helper()
	h.Name = strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	h.Bin = testenv.Build(t, "./caddymodules/function/testdata/testfn")
	dir, err := os.MkdirTemp("", "fn") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h.SocketDir = dir + "/s"
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h
}

var provisioning sync.Mutex

// testContext is a provisioned Caddy context with a config of its own, as
// handlers get when Caddy loads a config.
func testContext(t testing.TB) caddy.Context {
	t.Helper()
	// Caddy provisions one config at a time, and ProvisionContext writes
	// a global (certmagic's default storage): parallel tests take turns.
	provisioning.Lock()
	defer provisioning.Unlock()
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return ctx
}

// call sends one request through h and returns the recorded response and
// the error h returned for Caddy's error route.
func call(h *Handler, path string) (*httptest.ResponseRecorder, error) {
	return callMethod(h, "GET", path)
}

// callMethod is call with another method. Crashing requests use POST: Go's
// transport (like Caddy's reverse_proxy) sends an idempotent request again
// when a reused connection fails, which would crash a second process.
func callMethod(h *Handler, method, path string) (*httptest.ResponseRecorder, error) {
	rec := httptest.NewRecorder()
	err := h.ServeHTTP(rec, httptest.NewRequest(method, path, nil), nil)
	return rec, err
}

func pidOf(t *testing.T, h *Handler) int {
	t.Helper()
	rec, err := call(h, "/ok")
	if err != nil || rec.Code != 200 {
		t.Fatalf("GET /ok: %d %v", rec.Code, err)
	}
	pid, err := strconv.Atoi(rec.Body.String())
	if err != nil {
		t.Fatalf("body %q", rec.Body.String())
	}
	return pid
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func problemOf(t *testing.T, err error) (int, string) {
	t.Helper()
	var he caddyhttp.HandlerError
	var p *problem.Problem
	if !errors.As(err, &he) || !errors.As(err, &p) {
		t.Fatalf("error %v is not a HandlerError carrying a problem", err)
	}
	return he.StatusCode, p.Code
}

func TestColdStartThenWarmReuse(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	first := pidOf(t, h)
	if second := pidOf(t, h); second != first {
		t.Fatalf("warm request went to pid %d, cold start was %d", second, first)
	}
}

func TestConcurrentFirstRequestsStartOneProcess(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	const n = 16
	pids := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, err := call(h, "/sleep?d=50ms")
			if err == nil {
				pids[i], _ = strconv.Atoi(rec.Body.String())
			}
		}()
	}
	wg.Wait()
	for i, pid := range pids {
		if pid == 0 || pid != pids[0] {
			t.Fatalf("request %d answered by pid %d, first by %d: want one process", i, pid, pids[0])
		}
	}
}

func TestIdleFunctionIsStoppedAndStartsAgain(t *testing.T) {
	t.Parallel()
	idle := caddy.Duration(150 * time.Millisecond)
	h := newHandler(t, &Handler{IdleTimeout: &idle})
	pid := pidOf(t, h)
	waitFor(t, "idle stop", func() bool { return !testenv.Alive(pid) })
	if again := pidOf(t, h); again == pid {
		t.Fatal("same pid after idle stop")
	}
}

// The last request to end arms the idle timer even if it ran on a
// process that has crashed since: the process that replaced it served the
// requests meanwhile, all ended before it, and must still be stopped once
// idle.
func TestTheLastRequestArmsTheIdleTimerWhicheverProcessItRanOn(t *testing.T) {
	in := newInstance(spec{name: "idle-arm", idleTimeout: time.Hour}, zap.NewNop())
	crashed, current := &process{}, &process{}
	in.proc = current
	in.metrics.inFlight.Inc()
	in.inflight = 1 // a slow client's answer from the crashed process
	in.release(crashed)
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.idle == nil {
		t.Fatal("no idle timer armed: the current process stays up until the next request")
	}
	in.idle.Stop()
}

func TestInFlightRequestKeepsFunctionAlivePastIdleTimeout(t *testing.T) {
	t.Parallel()
	idle := caddy.Duration(100 * time.Millisecond)
	h := newHandler(t, &Handler{IdleTimeout: &idle})
	rec, err := call(h, "/sleep?d=400ms")
	if err != nil || rec.Code != 200 {
		t.Fatalf("long request cut: %d %v", rec.Code, err)
	}
}

func TestCrashMidRequestIs502AndNextRequestRestarts(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	pid := pidOf(t, h)
	_, err := callMethod(h, "POST", "/crash")
	if status, code := problemOf(t, err); status != 502 || code != "function_failed" {
		t.Fatalf("crash gave %d %s", status, code)
	}
	waitFor(t, "crashed process to exit", func() bool { return !testenv.Alive(pid) })
	if again := pidOf(t, h); again == pid {
		t.Fatal("not restarted")
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	if got := []time.Duration{backoff(0), backoff(1), backoff(2), backoff(5), backoff(50)}; got[0] != 0 || got[1] != 100*time.Millisecond ||
		got[2] != 200*time.Millisecond || got[3] != 1600*time.Millisecond || got[4] != 30*time.Second {
		t.Fatalf("backoff sequence %v", got)
	}
	t.Setenv("TESTFN_FAIL_START", "1")
	h := newHandler(t, &Handler{Env: []string{"TESTFN_FAIL_START"}, StartTimeout: caddy.Duration(150 * time.Millisecond)})
	starts := 0
	for range 8 {
		_, err := call(h, "/ok")
		if status, code := problemOf(t, err); status != 503 || code != "function_unavailable" {
			t.Fatalf("failing start gave %d %s", status, code)
		}
	}
	h.inst.mu.Lock()
	starts = int(h.inst.starts)
	h.inst.mu.Unlock()
	// 8 requests in quick succession: backoff (100, 200, 400 ms... longer
	// than the start timeout after a few) turns most into fast refusals.
	if starts >= 8 {
		t.Fatalf("%d starts for 8 requests: no backoff", starts)
	}
}

func TestNeverReadyIs503AfterStartTimeout(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{StartTimeout: caddy.Duration(200 * time.Millisecond)})
	h.inst.spec.env = append(h.inst.spec.env, "TESTFN_NEVER_READY=1")
	_, err := call(h, "/ok")
	if status, code := problemOf(t, err); status != 503 || code != "function_unavailable" {
		t.Fatalf("never-ready gave %d %s", status, code)
	}
}

func TestHungRequestIsCutWith504(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{Timeout: caddy.Duration(200 * time.Millisecond)})
	_, err := call(h, "/sleep?d=1m")
	if status, code := problemOf(t, err); status != 504 || code != "function_timeout" {
		t.Fatalf("hang gave %d %s", status, code)
	}
	pidOf(t, h) // the function itself still serves
}

// A process that answers none of hungAfter requests in a row, each sent
// to it whole, and then no probe either (here frozen with SIGSTOP), is
// killed as hung and replaced.
func TestAFrozenProcessIsReplaced(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{Timeout: caddy.Duration(300 * time.Millisecond)})
	pid := pidOf(t, h)
	for i := range hungAfter {
		path := "/ok"
		if i == 0 {
			path = "/freeze"
		}
		rec, err := callMethod(h, "POST", path)
		if err == nil {
			t.Fatalf("request %d to a frozen process: answered %d %q", i, rec.Code, rec.Body.String())
		}
		if status, code := problemOf(t, err); status != 504 || code != "function_timeout" {
			t.Fatalf("request %d to a frozen process: %d %s", i, status, code)
		}
	}
	waitFor(t, "the frozen process to be killed", func() bool { return !testenv.Alive(pid) })
	waitFor(t, "a fresh process", func() bool {
		rec, err := call(h, "/ok")
		return err == nil && rec.Code == 200 && rec.Body.String() != strconv.Itoa(pid)
	})
}

// A process whose server answers but whose handlers are deadlocked (its
// probe says handlers keep running past their request's deadline) is killed
// as hung and replaced, as a frozen one is. Before, the probe's 404 alone
// kept it, every request to the route timing out until Caddy restarted.
func TestADeadlockedProcessIsReplaced(t *testing.T) {
	t.Parallel()
	// Its stuck age from Caddy's environment, as an operator would pass
	// it: a second, where the default waits two minutes.
	os.Setenv("GUARDIAN_TEST_DEADLOCK_STUCK_AFTER", "1s")
	t.Cleanup(func() { os.Unsetenv("GUARDIAN_TEST_DEADLOCK_STUCK_AFTER") })
	h := newHandler(t, &Handler{Timeout: caddy.Duration(300 * time.Millisecond),
		Env: []string{fnserve.EnvStuckAfter + "=GUARDIAN_TEST_DEADLOCK_STUCK_AFTER"}})
	core, logs := observer.New(zap.ErrorLevel)
	h.inst.log = zap.New(core)
	pid := pidOf(t, h)
	// Every few timeouts a probe: those before the oldest handler is a
	// second past its deadline find the process slow.
	waitFor(t, "the deadlocked process to be killed", func() bool {
		if !testenv.Alive(pid) {
			return true
		}
		if rec, err := call(h, "/deadlock"); err == nil {
			t.Fatalf("a deadlocked handler answered %d", rec.Code)
		}
		return false
	})
	waitFor(t, "a fresh process", func() bool {
		rec, err := call(h, "/ok")
		return err == nil && rec.Code == 200 && rec.Body.String() != strconv.Itoa(pid)
	})
	if logs.FilterMessageSnippet("handlers are still running long past their request's deadline").Len() != 1 {
		t.Fatalf("the kill was not logged as for stuck handlers: %v", logs.All())
	}
}

// A process whose handlers are slow (a dependency stalled: every request
// times out, concurrent ones at once) still answers the probe: it is left
// to its requests, not killed with them.
// Each probe it answers would say so, every few timeouts under a stalled
// dependency: the line comes once per 30 s.
func TestASlowProcessIsNotTakenForHung(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{Timeout: caddy.Duration(300 * time.Millisecond)})
	core, logs := observer.New(zap.WarnLevel)
	h.inst.log = zap.New(core) // before the first request starts anything that logs
	pid := pidOf(t, h)
	for range 2 { // two probes, each answered
		var wg sync.WaitGroup
		for range 2 * hungAfter {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := call(h, "/sleep?d=1m"); err == nil {
					t.Error("a request sleeping a minute was answered within its 300 ms")
				}
			}()
		}
		wg.Wait()
		time.Sleep(2 * probeWait) // the probe has answered by now
		if again := pidOf(t, h); again != pid {
			t.Fatal("a slow process was killed as hung")
		}
	}
	if n := logs.FilterMessageSnippet("slow, not hung").Len(); n != 1 {
		t.Fatalf("%d lines for two answered probes within 30 s, want 1", n)
	}
}

// A process draining for a reload or idleness may have closed its server
// already, so a probe would go unanswered: it is not probed, and the
// requests still inside their grace are not cut by a kill. Here the
// process is frozen, which a probe would take for hung.
func TestAProcessBeingStoppedIsNotProbed(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{Timeout: caddy.Duration(300 * time.Millisecond)})
	pid := pidOf(t, h)
	h.inst.mu.Lock()
	h.inst.proc.stopping = true // as stopIfIdle and a reload mark it
	h.inst.mu.Unlock()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	for i := range hungAfter + 1 {
		path := "/ok"
		if i == 0 {
			path = "/freeze"
		}
		if _, err := callMethod(h, "POST", path); err == nil {
			t.Fatalf("request %d to a frozen process was answered", i)
		}
	}
	time.Sleep(2 * probeWait) // a probe would have given up by now
	if !testenv.Alive(pid) {
		t.Fatal("a process being stopped was killed as hung")
	}
}

// A request whose body the client has not finished sending is not the
// function's silence: clients trickling uploads past the timeout do not
// get the process killed.
func TestSlowUploadsDoNotMakeAProcessHung(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{Timeout: caddy.Duration(200 * time.Millisecond)})
	pid := pidOf(t, h)
	for range hungAfter + 1 {
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write([]byte("part of a body"))
			// Never the rest: the server's read_body timeout cuts it.
			time.Sleep(400 * time.Millisecond)
			pw.CloseWithError(errors.New("read_body timeout"))
		}()
		err := h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/sleep?d=1m", pr), nil)
		if status, code := problemOf(t, err); status != 504 || code != "function_timeout" {
			t.Fatalf("a slow upload: %d %s", status, code)
		}
	}
	if again := pidOf(t, h); again != pid {
		t.Fatal("slow uploads got the process replaced")
	}
}

// The runtime sends a function its settings only once the function says
// it is sealed: testfn, named so, waits 300 ms before sealing and fails
// its start if anything arrived meanwhile.
func TestNoSettingsReachAnUnsealedFunction(t *testing.T) {
	t.Setenv("GUARDIAN_REDIS_ADDR", "127.0.0.1:1")
	h := newHandler(t, &Handler{Env: []string{"GUARDIAN_REDIS_ADDR"}}) // named ...Unsealed...
	rec, err := call(h, "/env")
	if err != nil || !strings.Contains(rec.Body.String(), "GUARDIAN_REDIS_ADDR=127.0.0.1:1") {
		t.Fatalf("%v %s", err, rec.Body)
	}
}

func TestFunctionSeesOnlyAllowedEnvironment(t *testing.T) {
	t.Setenv("GUARDIAN_KEY_PEPPER", "pepper-that-must-not-reach-the-function")
	t.Setenv("GUARDIAN_REDIS_ADDR", "127.0.0.1:1")
	h := newHandler(t, &Handler{Env: []string{"GUARDIAN_REDIS_ADDR", "UNSET_VARIABLE"}})
	rec, err := call(h, "/env")
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		got[k] = true
		if strings.Contains(kv, "pepper-that-must-not") {
			t.Fatalf("pepper reached the function: %s", kv)
		}
	}
	for _, k := range []string{"GUARDIAN_REDIS_ADDR", "PATH", "GUARDIAN_FUNCTION_NAME"} {
		if !got[k] {
			t.Errorf("%s missing from %v", k, env)
		}
	}
	if got["HOME"] || got["GUARDIAN_KEY_PEPPER"] || got["UNSET_VARIABLE"] || got[fnserve.EnvSettingsFD] {
		t.Errorf("unexpected variables: %v", env)
	}
	// The settings came through the pipe: the process's initial
	// environment, which /proc shows (to its user until it is sealed, and
	// to root), holds none of them.
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pidOf(t, h)))
	if errors.Is(err, fs.ErrPermission) {
		t.Skip("cannot read a sealed process's environ as this user")
	}
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(environ), "GUARDIAN_REDIS_ADDR") || !strings.Contains(string(environ), fnserve.EnvSettingsFD) {
		t.Errorf("the function's initial environment: %q", environ)
	}
}

// A function runs as Caddy's user, so a file of its directory is one it
// could rename over another function's socket (and be sent that
// function's requests, passwords included) or unlink. Sockets are
// abstract: the directory, the functions' working directory, holds none,
// and the runtime still reaches its function.
func TestNoSocketFileAFunctionCouldTakeOver(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	pidOf(t, h)
	st, err := os.Stat(h.SocketDir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v", st.Mode().Perm())
	}
	h.inst.mu.Lock()
	sock := h.inst.proc.socket
	h.inst.mu.Unlock()
	if !strings.HasPrefix(sock, "@") {
		t.Fatalf("socket %q is a path", sock)
	}
	err = filepath.WalkDir(h.SocketDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSocket != 0 {
			t.Errorf("a socket file in the functions' directory: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Two starts never share a name, and the names are not guessable.
	a, _ := socketName("f", 1)
	b, _ := socketName("f", 1)
	if a == b {
		t.Fatalf("two socket names alike: %s", a)
	}
	pidOf(t, h)
}

func TestCleanupStopsTheProcess(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	pid := pidOf(t, h)
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "process to stop", func() bool { return !testenv.Alive(pid) })
}

func TestValidate(t *testing.T) {
	bin := testenv.Build(t, "./caddymodules/function/testdata/testfn")
	plain := t.TempDir() + "/plain"
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		h    Handler
	}{
		{"missing name", Handler{Bin: bin}},
		{"name with a slash", Handler{Name: "a/b", Bin: bin}},
		{"missing bin", Handler{Name: "x"}},
		{"bin that does not exist", Handler{Name: "x", Bin: "/nonexistent/fn"}},
		{"bin that is not executable", Handler{Name: "x", Bin: plain}},
		{"env entry renaming from nothing", Handler{Name: "x", Bin: bin, Env: []string{"A="}}},
		{"env entry that is not a name", Handler{Name: "x", Bin: bin, Env: []string{"A b"}}},
		{"env name given twice", Handler{Name: "x", Bin: bin, Env: []string{"A=B", "C", "A=D"}}},
		{"buffer_body past 1GiB (JSON)", Handler{Name: "x", Bin: bin, BufferBody: 1<<62 + 1}},
		{"negative buffer_body (JSON)", Handler{Name: "x", Bin: bin, BufferBody: -1}},
		{"negative max_concurrent (JSON)", Handler{Name: "x", Bin: bin, MaxConcurrent: -1}},
	}
	for _, tc := range cases {
		if err := tc.h.Validate(); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	ok := Handler{Name: "x", Bin: bin, Env: []string{"A", "B=C"}, BufferBody: 1 << 30}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid handler refused: %v", err)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	cases := []struct {
		name, input string
		wantErr     bool
		check       func(h Handler) bool
	}{
		{"full block", `guardian_function healthz {
			bin /bin/true
			env A B
			env C
			idle_timeout 0
			start_timeout 2s
			timeout 5s
			max_concurrent 8
			queue_timeout 1s
			socket_dir /tmp/x
		}`, false, func(h Handler) bool {
			return h.Name == "healthz" && h.Bin == "/bin/true" && len(h.Env) == 3 && h.IdleTimeout != nil && *h.IdleTimeout == 0 &&
				h.StartTimeout == caddy.Duration(2*time.Second) && h.MaxConcurrent == 8 && h.SocketDir == "/tmp/x"
		}},
		{"name is required", "guardian_function", true, nil},
		{"two names refused", "guardian_function a b", true, nil},
		{"unknown setting refused", "guardian_function a {\n memory 1G\n}", true, nil},
		{"bad duration refused", "guardian_function a {\n timeout soon\n}", true, nil},
		{"zero timeout refused", "guardian_function a {\n timeout 0\n}", true, nil},
		{"zero start_timeout refused", "guardian_function a {\n start_timeout 0s\n}", true, nil},
		{"zero queue_timeout refused", "guardian_function a {\n queue_timeout 0\n}", true, nil},
		{"zero concurrency refused", "guardian_function a {\n max_concurrent 0\n}", true, nil},
		{"env without names refused", "guardian_function a {\n env\n}", true, nil},
		{"buffer_body", "guardian_function a {\n buffer_body 64KiB\n}", false, func(h Handler) bool { return h.BufferBody == 64<<10 }},
		{"buffer_body zero refused", "guardian_function a {\n buffer_body 0\n}", true, nil},
		{"buffer_body nonsense refused", "guardian_function a {\n buffer_body lots\n}", true, nil},
		{"buffer_body too large refused", "guardian_function a {\n buffer_body 2GiB\n}", true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tc.check != nil && !tc.check(h) {
				t.Errorf("parsed %+v", h)
			}
		})
	}
}

// Request bodies of every size reach the function whole: small ones fit
// the transport's write buffer, larger ones go through pooledConn.ReadFrom.
func TestRequestBodiesReachTheFunctionWhole(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	for _, n := range []int{0, 1, 3000, 4096, 12 << 10, 100 << 10, 1 << 20} {
		body := make([]byte, n)
		_, _ = rand.Read(body)
		rec := httptest.NewRecorder()
		if err := h.ServeHTTP(rec, httptest.NewRequest("POST", "/sum", bytes.NewReader(body)), nil); err != nil || rec.Code != 200 {
			t.Fatalf("%d bytes: %d %v", n, rec.Code, err)
		}
		if want := fmt.Sprintf("%d %x", n, sha256.Sum256(body)); rec.Body.String() != want {
			t.Fatalf("%d bytes: the function read %q, want %q", n, rec.Body.String(), want)
		}
	}
}

// pooledConn copies a body without allocating a buffer for it.
func TestPooledConnCopiesWithoutAllocating(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	c := &pooledConn{Conn: a}
	body := bytes.NewReader(make([]byte, 3400))
	var src io.Reader = struct{ io.Reader }{body} // as http.Transport passes it: no WriterTo
	lr := &io.LimitedReader{}
	allocs := testing.AllocsPerRun(100, func() {
		body.Seek(0, io.SeekStart)
		*lr = io.LimitedReader{R: src, N: 3400}
		if n, err := c.ReadFrom(lr); n != 3400 || err != nil {
			t.Fatalf("copied %d: %v", n, err)
		}
	})
	if allocs > 0 {
		t.Fatalf("%.0f allocations per body", allocs)
	}
}

// With buffer_body, a client sending its body slowly holds no slot while
// it does: the function's one slot still serves others. Without it, the
// slow upload would hold the slot and the others would wait.
func TestSlowUploadHoldsNoSlotWhenBuffered(t *testing.T) {
	t.Parallel()
	for _, buffered := range []bool{true, false} {
		h := &Handler{MaxConcurrent: 1, QueueTimeout: caddy.Duration(300 * time.Millisecond)}
		if buffered {
			h.BufferBody = 1 << 20
		}
		h = newHandler(t, h)
		slow, feed := io.Pipe()
		started := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			req := httptest.NewRequest("POST", "/sum", slow)
			close(started)
			done <- h.ServeHTTP(httptest.NewRecorder(), req, nil)
		}()
		<-started
		_, _ = feed.Write([]byte("first bytes"))
		time.Sleep(100 * time.Millisecond) // the slow request is in, its body not
		rec, err := call(h, "/ok")
		if buffered && (err != nil || rec.Code != 200) {
			t.Fatalf("buffered: a request during a slow upload: %d %v", rec.Code, err)
		}
		if !buffered {
			if code, _ := problemOf(t, err); code != http.StatusServiceUnavailable {
				t.Fatalf("streamed: a request during a slow upload: %d %v, want 503 (the slot is held)", rec.Code, err)
			}
		}
		_, _ = feed.Write([]byte(" and the rest"))
		feed.Close()
		if err := <-done; err != nil {
			t.Fatalf("buffered %v: the slow upload: %v", buffered, err)
		}
	}
}

// A buffered body over the bound is 413 before the function sees it,
// whether the client declares its length or not.
func TestBufferedBodyOverTheBoundIs413(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{BufferBody: 1000})
	for _, declared := range []bool{true, false} {
		req := httptest.NewRequest("POST", "/sum", bytes.NewReader(make([]byte, 1001)))
		if !declared {
			req.ContentLength = -1
		}
		err := h.ServeHTTP(httptest.NewRecorder(), req, nil)
		if code, name := problemOf(t, err); code != http.StatusRequestEntityTooLarge || name != "payload_too_large" {
			t.Fatalf("declared %v: %d %s", declared, code, name)
		}
	}
	rec := httptest.NewRecorder()
	body := make([]byte, 1000)
	if err := h.ServeHTTP(rec, httptest.NewRequest("POST", "/sum", bytes.NewReader(body)), nil); err != nil ||
		rec.Body.String() != fmt.Sprintf("1000 %x", sha256.Sum256(body)) {
		t.Fatalf("at the bound: %d %q %v", rec.Code, rec.Body.String(), err)
	}
}

// The bodies a handler buffers at once are bounded, counted in the bytes
// that actually arrived: past the bound a request is 503, and once the
// others are done it gets through.
func TestBufferedBodiesAreBoundedTogether(t *testing.T) {
	t.Parallel()
	// The bound: 40 KiB and a chunk read past it (72 KiB).
	h := newHandler(t, &Handler{BufferBody: 40 << 10, bufferTotal: 2 * bufferChunk})
	var feeds []*io.PipeWriter
	done := make(chan error, 2)
	for range 2 {
		slow, feed := io.Pipe()
		feeds = append(feeds, feed)
		go func() { done <- h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/sum", slow), nil) }()
		// A pipe's Write returns once the reader has it all, and the last
		// byte is read only after the chunk before it was charged: each
		// upload holds a chunk now, 64 of the 72 KiB.
		_, _ = feed.Write(make([]byte, bufferChunk+1))
	}
	// From another client: the bound is everyone's, not its own share.
	full := outcomes(t, h.Name, outcomeBufferFull)
	third := httptest.NewRequest("POST", "/sum", bytes.NewReader(make([]byte, bufferChunk)))
	third.RemoteAddr = "203.0.113.5:4321"
	err := h.ServeHTTP(httptest.NewRecorder(), third, nil)
	if code, name := problemOf(t, err); code != http.StatusServiceUnavailable || name != "function_busy" {
		t.Fatalf("a body past what the bound has left: %d %s", code, name)
	}
	if got := outcomes(t, h.Name, outcomeBufferFull) - full; got != 1 {
		t.Errorf("%d requests counted buffer_full, want 1", got)
	}
	for _, feed := range feeds {
		feed.Close()
	}
	for range feeds {
		if err := <-done; err != nil {
			t.Fatalf("a slow upload: %v", err)
		}
	}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, httptest.NewRequest("POST", "/sum", bytes.NewReader([]byte("small"))), nil); err != nil || rec.Code != 200 {
		t.Fatalf("after the others are done: %d %v", rec.Code, err)
	}
}

// One holder (a customer, or a network without a credential) may hold a
// sixteenth of the bound on buffered bodies, or one body if that is more:
// a customer sending bodies slowly keeps its own requests out, not
// everyone else's. IPv6 clients are held by their /48.
func TestOneHolderTakesAShareOfTheBound(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ first, second, other string }{
		{"198.51.100.7", "198.51.100.7", "203.0.113.9"},
		{"[2001:db8:1:1::1]", "[2001:db8:1:ffff::2]", "[2001:db8:2::1]"},
	} {
		checkHolderShare(t, tc.first, tc.second, tc.other)
	}
}

// checkHolderShare holds two chunks of bodies from first, checks that a third
// from second (the same holder) is refused, and one from other is not.
func checkHolderShare(t *testing.T, first, second, other string) {
	t.Helper()
	// Bound 1,280 KiB, a holder's share its sixteenth, 80 KiB (a body
	// needs 72).
	h := newHandler(t, &Handler{BufferBody: 40 << 10, bufferTotal: 40 * bufferChunk})
	from := func(addr string, body io.Reader) *http.Request {
		r := httptest.NewRequest("POST", "/sum", body)
		r.RemoteAddr = addr + ":4321"
		return r
	}
	var feeds []*io.PipeWriter
	done := make(chan error, 2)
	for range 2 {
		slow, feed := io.Pipe()
		feeds = append(feeds, feed)
		go func() { done <- h.ServeHTTP(httptest.NewRecorder(), from(first, slow), nil) }()
		_, _ = feed.Write(make([]byte, bufferChunk+1)) // a chunk held each
	}
	own, full := outcomes(t, h.Name, outcomeBusyClient), outcomes(t, h.Name, outcomeBufferFull)
	err := h.ServeHTTP(httptest.NewRecorder(), from(second, bytes.NewReader(make([]byte, bufferChunk))), nil)
	if code, name := problemOf(t, err); code != http.StatusServiceUnavailable || name != "function_busy" {
		t.Fatalf("a third body of the holder of %s past its share: %d %s", second, code, name)
	}
	// Its own doing, not the function's bound: busy_client.
	if o, f := outcomes(t, h.Name, outcomeBusyClient)-own, outcomes(t, h.Name, outcomeBufferFull)-full; o != 1 || f != 0 {
		t.Errorf("counted busy_client %d, buffer_full %d; want 1 and 0", o, f)
	}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, from(other, bytes.NewReader(make([]byte, bufferChunk))), nil); err != nil || rec.Code != 200 {
		t.Fatalf("another holder's body meanwhile: %d %v", rec.Code, err)
	}
	for _, f := range feeds {
		f.Close()
	}
	for range feeds {
		<-done
	}
}

// A buffered body over the route's bound is 413 as soon as the byte past
// it arrives, not once a whole chunk has.
func TestATooLargeBodyIsRefusedAtTheFirstByteTooMany(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{BufferBody: 8 << 10})
	slow, feed := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/sum", slow), nil) }()
	_, _ = feed.Write(make([]byte, 8<<10+1)) // and no more: the client stalls
	select {
	case err := <-done:
		if code, name := problemOf(t, err); code != http.StatusRequestEntityTooLarge || name != "payload_too_large" {
			t.Fatalf("%d %s", code, name)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a body one byte too large waited for more")
	}
	feed.Close()
}

// Uploads that declared a body and sent nothing hold none of the bound:
// many of them (a client opening thousands of sign-ins and sending no
// body) do not keep a request that sends its body out.
func TestIdleUploadsHoldNoneOfTheBound(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{BufferBody: 40 << 10, bufferTotal: 2 * bufferChunk})
	var feeds []*io.PipeWriter
	done := make(chan error, 4)
	for range 4 {
		body, feed := io.Pipe()
		feeds = append(feeds, feed)
		watched, reading := testenv.Reading(body)
		req := httptest.NewRequest("POST", "/sum", watched)
		req.ContentLength = 30 << 10
		go func() { done <- h.ServeHTTP(httptest.NewRecorder(), req, nil) }()
		select {
		case <-reading:
		case err := <-done:
			t.Fatalf("an idle upload was answered before it sent a byte: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("an idle upload was never read")
		}
	}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, httptest.NewRequest("POST", "/sum", bytes.NewReader([]byte("small"))), nil); err != nil || rec.Code != 200 {
		t.Fatalf("a body sent in full while four uploads idle: %d %v", rec.Code, err)
	}
	for _, f := range feeds {
		f.Close()
	}
	for range feeds {
		<-done
	}
}

// TestAnInformationalAnswerKeepsTheEdgesHeaders: Go's reverse proxy
// writes a function's 1xx with the function's headers in the response's
// header map, then clears the map, the edge's headers (HSTS, CSP,
// Request-Id, RateLimit-*) with it. A function may send 103 unasked; its
// 1xx stays between it and the edge.
func TestAnInformationalAnswerKeepsTheEdgesHeaders(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	rec := &informational{ResponseRecorder: httptest.NewRecorder()}
	rec.Header().Set("Strict-Transport-Security", "max-age=63072000")
	rec.Header().Set("Request-Id", "r-1")
	if err := h.ServeHTTP(rec, httptest.NewRequest("GET", "/early", nil), nil); err != nil {
		t.Fatal(err)
	}
	hdr := rec.Result().Header
	if rec.Code != 200 || rec.Body.Len() == 0 {
		t.Fatalf("answer %d %q", rec.Code, rec.Body)
	}
	if got := hdr.Values("Strict-Transport-Security"); len(got) != 1 || got[0] != "max-age=63072000" {
		t.Errorf("Strict-Transport-Security = %q, want the edge's alone", got)
	}
	if hdr.Get("Request-Id") != "r-1" || hdr.Get("X-Final") != "yes" {
		t.Errorf("headers %v: want the edge's and the function's final ones", hdr)
	}
	if hdr.Get("Link") != "" || len(rec.early) != 0 {
		t.Errorf("the function's 1xx reached the client: %v, Link %q", rec.early, hdr.Get("Link"))
	}
}

// informational records the 1xx codes written through it, which
// httptest.ResponseRecorder ignores.
type informational struct {
	*httptest.ResponseRecorder
	early []int
}

func (r *informational) WriteHeader(code int) {
	if code >= 100 && code < 200 {
		r.early = append(r.early, code)
		return
	}
	r.ResponseRecorder.WriteHeader(code)
}

// TestAFunctionCannotSwitchProtocols: the connection would be the
// function's from then on, its answer without the edge's headers, past
// its timeout and its audit row. No function switches protocols.
func TestAFunctionCannotSwitchProtocols(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", "max-age=63072000")
		var he caddyhttp.HandlerError
		if err := h.ServeHTTP(w, r, nil); errors.As(err, &he) {
			w.WriteHeader(he.StatusCode)
		}
	}))
	defer srv.Close()
	req, err := http.NewRequest("GET", srv.URL+"/switch", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("a function's 101: the client got %d %v, want 502", resp.StatusCode, resp.Header)
	}
}

// A function's report of a failed credential check leaves its answer and
// becomes the request's auth failure, as guardian_auth would set it; a
// reason that is not a plain word is dropped, and a failure already set
// stands.
func TestAFunctionsAuthFailureReachesTheEdge(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	cases := []struct {
		name, path, before, want string
	}{
		{"reported", "/authfail?reason=invalid_signature", "", "invalid_signature"},
		{"not a plain word", "/authfail?reason=" + url.QueryEscape("Bad Reason!"), "", ""},
		{"too long", "/authfail?reason=" + strings.Repeat("a", 65), "", ""},
		{"empty", "/authfail?reason=", "", ""},
		{"auth's failure first", "/authfail?reason=invalid_signature", "unknown_key", "unknown_key"},
		{"none", "/ok", "", ""},
	}
	for _, tc := range cases {
		req := httptest.NewRequest("GET", tc.path, nil)
		vars := map[string]any{}
		if tc.before != "" {
			vars[varAuthFailure] = tc.before
		}
		req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, vars))
		rec := httptest.NewRecorder()
		if err := h.ServeHTTP(rec, req, nil); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got, _ := vars[varAuthFailure].(string); got != tc.want {
			t.Errorf("%s: failure %q, want %q", tc.name, got, tc.want)
		}
		if v := rec.Header().Values(identity.HeaderAuthFailure); len(v) != 0 {
			t.Errorf("%s: the client got %s: %q", tc.name, identity.HeaderAuthFailure, v)
		}
	}
}

// A buffered body is given back to the bound once the function has it,
// not when the function answers: while the function works (ingest waits
// for its insert) the bytes are the function's to bound.
func TestABufferedBodyIsGivenBackOnceSent(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{BufferBody: 40 << 10})
	done := make(chan error, 1)
	go func() {
		done <- h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/sleep?d=3s", bytes.NewReader(make([]byte, 30<<10))), nil)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.buffered.mu.Lock()
		used := h.buffered.used
		h.buffered.mu.Unlock()
		select {
		case err := <-done:
			t.Fatalf("answered (%v) before its body was given back (%d bytes held)", err, used)
		default:
		}
		if used == 0 && len(h.sem) == 1 {
			break // the function has it, and is still at work
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still held while the function works", used)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A function's own 5xx answers (its database away, a bug) are proxied as
// they are, and counted by their problem's code, so that load shed on
// purpose (busy) is told from failures: the duration histogram calls them
// proxied.
func TestAFunctionsOwnServerErrorsAreCounted(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	count := func(code string) float64 { return testutil.ToFloat64(h.metrics.serverErrors.WithLabelValues(code)) }
	for _, tc := range []struct{ path, code string }{
		{"/fail", "unavailable"}, // fnserve made http.Error's text a problem
		{"/problem?code=busy", "busy"},
		{"/problem?code=storage_unavailable&pad=3000", "storage_unavailable"},
		{"/problem?code=Not+A+Name", "other"},
		{"/problem?code=made_up_code", "other"},  // a function cannot add series
		{"/problem?code=busy&pad=5000", "other"}, // past what is read for the code
	} {
		before := count(tc.code)
		rec, err := call(h, tc.path)
		if err != nil || rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s: %d %v", tc.path, rec.Code, err)
		}
		if got := count(tc.code) - before; got != 1 {
			t.Errorf("%s: %v counted as %s, want 1", tc.path, got, tc.code)
		}
		// The body reaches the client whole, the bytes read for the code
		// included.
		var doc struct{ Code, Detail string }
		if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || doc.Code == "" {
			t.Errorf("%s: body %d bytes, %v", tc.path, rec.Body.Len(), err)
		}
		if u, _ := url.Parse(tc.path); u.Query().Has("pad") && len(doc.Detail) != atoi(u.Query().Get("pad")) {
			t.Errorf("%s: detail of %d bytes", tc.path, len(doc.Detail))
		}
	}
	before := count("none") + count("other") + count("busy")
	if rec, err := call(h, "/ok"); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("/ok: %d %v", rec.Code, err)
	}
	if after := count("none") + count("other") + count("busy"); after != before {
		t.Fatal("a 200 was counted")
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// A slow or failing function logs one line per interval, counting the
// requests it stands for, not one line per request: under load that
// would be a line per refused request.
func TestTimeoutsAndFailuresAreLoggedOncePerInterval(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{Timeout: caddy.Duration(200 * time.Millisecond)})
	core, logs := observer.New(zap.WarnLevel)
	h.log = zap.New(core)
	lines := func(msg string) (n int, last int64) {
		for _, e := range logs.FilterMessageSnippet(msg).All() {
			n++
			for _, f := range e.Context {
				if f.Key == "timed_out" || f.Key == "failed" {
					last = f.Integer
				}
			}
		}
		return n, last
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if _, err := call(h, "/sleep?d=1m"); err == nil {
				t.Error("a hung request answered")
			}
		})
	}
	wg.Wait()
	if n, c := lines("function timed out"); n != 1 || c != 1 {
		t.Fatalf("3 timeouts: %d lines (last counting %d), want 1 counting 1", n, c)
	}
	h.inst.timeoutLog.Pass()
	if _, err := call(h, "/sleep?d=1m"); err == nil {
		t.Fatal("a hung request answered")
	}
	if n, c := lines("function timed out"); n != 2 || c != 3 {
		t.Fatalf("after the interval: %d lines (last counting %d), want 2, the last counting 3", n, c)
	}
	for range 2 {
		pid := pidOf(t, h)
		if _, err := callMethod(h, "POST", "/crash"); err == nil {
			t.Fatal("a crash answered")
		}
		waitFor(t, "crashed process to exit", func() bool { return !testenv.Alive(pid) })
	}
	if n, c := lines("function request failed"); n != 1 || c != 1 {
		t.Fatalf("2 failures: %d lines (last counting %d), want 1 counting 1", n, c)
	}
}

// outcomes is how many requests to function name the duration histogram
// has counted with outcome.
func outcomes(t *testing.T, name, outcome string) uint64 {
	t.Helper()
	var m dto.Metric
	if err := metrics.duration.WithLabelValues(name, outcome).(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// Every 5xx problem code a function answers is one the metric knows:
// another would be counted as other.
func TestProblemCodesKnowEveryFunctionsCode(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`problem\.New\(http\.Status(?:ServiceUnavailable|InternalServerError|BadGateway|GatewayTimeout|InsufficientStorage), "([^"]+)"`)
	found := 0
	for _, dir := range []string{"functions", "shared"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				found++
				if !slices.Contains(problemCodes, m[1]) {
					t.Errorf("%s answers 5xx %q, which problemCodes lacks", p, m[1])
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if found < 10 {
		t.Fatalf("found %d 5xx problems in the functions; the pattern no longer matches them", found)
	}
}
