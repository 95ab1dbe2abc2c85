package function

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/problem"
)

// refusal is the status and problem code of an error ServeHTTP returns.
func refusal(t *testing.T, err error) (int, string) {
	t.Helper()
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("error %v is not a handler error", err)
	}
	var p *problem.Problem
	if !errors.As(he.Err, &p) {
		t.Fatalf("error %v carries no problem", he.Err)
	}
	return he.StatusCode, p.Code
}

func TestAQueryTheProxyWouldCutIsRefused(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	rec, err := call(h, "/query?since=2026-01-01&key_id=a%20b")
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.Body.String(); got != "since=2026-01-01&key_id=a%20b" {
		t.Fatalf("the function saw %q", got)
	}
	for _, q := range []string{"key_id=%zz", "since=2026-01-01;", "a=1;b=2", "a=%", "a=%4", strings.Repeat("a=1&", maxQueryParams)} {
		_, err := call(h, "/query?"+q)
		if err == nil {
			t.Errorf("%q passed: the function would see it without the bad part", q)
			continue
		}
		if status, code := refusal(t, err); status != 400 || code != "invalid_query" {
			t.Errorf("%q: %d %s", q, status, code)
		}
	}
}

// proxyWouldCut refuses exactly what url.ParseQuery (the proxy's
// re-encoding) cannot parse.
func FuzzProxyWouldCut(f *testing.F) {
	for _, q := range []string{"", "a=1&b=2", "a=%20", "a=%zz", "a=%", "a=%2", "a;b", "%41=%42", "a=1&&&b"} {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, q string) {
		_, err := url.ParseQuery(q)
		if got := proxyWouldCut(q); got != (err != nil) {
			t.Fatalf("proxyWouldCut(%q) = %v, url.ParseQuery: %v", q, got, err)
		}
	})
}

func TestABusyFunctionSaysWhenToRetry(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{MaxConcurrent: 1, QueueTimeout: caddy.Duration(50 * time.Millisecond)})
	done := make(chan error, 1)
	go func() {
		_, err := call(h, "/sleep?d=2s")
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.sem) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first request never took its slot")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rec, err := call(h, "/ok")
	if status, code := refusal(t, err); status != 503 || code != "function_busy" {
		t.Fatalf("%d %s", status, code)
	}
	if rec.Header().Get("Retry-After") == "" {
		t.Error("503 function_busy without Retry-After")
	}
	// Another route to the same function (one process) shares the bound:
	// max_concurrent is the process's, not each route's.
	other := &Handler{Name: h.Name, Bin: h.Bin, SocketDir: h.SocketDir, MaxConcurrent: 1, QueueTimeout: caddy.Duration(50 * time.Millisecond)}
	if err := other.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Cleanup() })
	if other.inst != h.inst {
		t.Fatal("two routes to one function got two instances")
	}
	if _, err := call(other, "/ok"); err == nil {
		t.Fatal("another route to the busy function was served past its bound")
	} else if status, code := refusal(t, err); status != 503 || code != "function_busy" {
		t.Fatalf("another route: %d %s", status, code)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestAFunctionIsSealed: a function started by the runtime is
// non-dumpable, so the other functions (the same user) cannot read its
// environment or memory through /proc.
func TestAFunctionIsSealed(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	rec, err := call(h, "/sealed")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Body.String() != "true" {
		t.Fatalf("the function is dumpable (sealed: %s)", rec.Body)
	}
}

func TestAllowedEnvRenamesAndFiltersVariables(t *testing.T) {
	caddyEnv := map[string]string{"GUARDIAN_PG_DSN_KEYS": "postgres://keys", "GUARDIAN_PG_APP_DSN": "postgres://app", "SECRET": "s", "PATH": "/evil"}
	lookup := func(k string) (string, bool) { v, ok := caddyEnv[k]; return v, ok }
	got, unset := readEnv([]string{"GUARDIAN_PG_APP_DSN=GUARDIAN_PG_DSN_KEYS", "UNSET", "PATH", "A=GUARDIAN_PG_DSN_NONE"}, lookup)
	want := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GUARDIAN_PG_APP_DSN=postgres://keys"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q, want %q", got, want)
	}
	if !slices.Equal(unset.plain, []string{"UNSET"}) || !slices.Equal(unset.sources, []string{"GUARDIAN_PG_DSN_NONE"}) {
		t.Fatalf("unset %+v, want UNSET plain and GUARDIAN_PG_DSN_NONE a source", unset)
	}
	core, logs := observer.New(zap.InfoLevel)
	unset.log(zap.New(core))
	warned := logs.FilterLevelExact(zap.WarnLevel).All()
	if len(warned) != 1 || fmt.Sprint(warned[0].ContextMap()["unset"]) != "[GUARDIAN_PG_DSN_NONE]" {
		t.Fatalf("warnings %+v, want one naming the missing source", warned)
	}
	if logs.Len() != 2 {
		t.Fatalf("%d lines, want a warning and an info line", logs.Len())
	}
	(unsetEnv{}).log(zap.New(core))
	if logs.Len() != 2 {
		t.Fatal("nothing unset, yet a line was logged")
	}
	for _, bad := range []string{"", "A B", "=X", "A=", "A=B=C", "1A", "A-B", "A=B C"} {
		h := &Handler{Name: "x", Bin: "/bin/true", Env: []string{bad}}
		if err := h.Validate(); err == nil {
			t.Errorf("env %q accepted", bad)
		}
	}
}

// TestOnlyTheRuntimeMayConnect: another process of the same user (here a
// child of the test, standing in for a compromised function) that dials a
// function's socket is refused, while the runtime's requests go through.
func TestOnlyTheRuntimeMayConnect(t *testing.T) {
	if sock := os.Getenv("FN_DIAL_SOCKET"); sock != "" {
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Print("dial failed")
			os.Exit(0)
		}
		_, _ = c.Write([]byte("GET /ok HTTP/1.1\r\nHost: fn\r\nGuardian-Customer-Id: victim\r\n\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		fmt.Printf("answer %q", b)
		os.Exit(0)
	}
	t.Parallel()
	h := newHandler(t, &Handler{})
	pidOf(t, h) // started, and the runtime's request answered
	h.inst.mu.Lock()
	sock := h.inst.proc.socket
	h.inst.mu.Unlock()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOnlyTheRuntimeMayConnect$")
	cmd.Env = append(os.Environ(), "FN_DIAL_SOCKET="+sock)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `answer ""` {
		t.Fatalf("another process reached the function: %s", out)
	}
	pidOf(t, h) // still serving the runtime
}

// TestTheRuntimeDialsOnlyItsOwnSockets: a function socket's abstract name
// bound by another process (here a child of the test, standing in for
// another user who took the name after the function died) is refused;
// one this process made is not.
func TestTheRuntimeDialsOnlyItsOwnSockets(t *testing.T) {
	if name := os.Getenv("FN_BIND_SOCKET"); name != "" {
		ln, err := net.Listen("unix", name)
		if err != nil {
			fmt.Print(err)
			os.Exit(1)
		}
		fmt.Print("bound\n")
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\n\r\nstolen"))
			}
		}()
		_, _ = io.ReadAll(os.Stdin) // until the test ends
		os.Exit(0)
	}
	t.Parallel()
	name, err := socketName("taken", 1)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTheRuntimeDialsOnlyItsOwnSockets$")
	cmd.Env = append(os.Environ(), "FN_BIND_SOCKET="+name)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "bound\n" {
		t.Fatalf("the other process: %q", line)
	}
	if c, err := dialOwn(context.Background(), name); !errors.Is(err, errForeignSocket) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dialing a socket another process bound: %v, want errForeignSocket", err)
	}
	own, err := socketName("own", 1)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", own)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := dialOwn(context.Background(), own)
	if err != nil {
		t.Fatalf("dialing this process's own socket: %v", err)
	}
	c.Close()
}

// Routes to one function share its bound on buffered bodies, set by the
// first; a later route whose buffer_body could never fit it is refused
// when the config loads, not answered 503 on every large body.
func TestABufferBodyBeyondTheSharedBoundIsRefused(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{BufferBody: 64 << 10, bufferTotal: 1 << 20})
	other := &Handler{Name: h.Name, Bin: h.Bin, SocketDir: h.SocketDir, BufferBody: 2 << 20}
	err := other.Provision(testContext(t))
	t.Cleanup(func() { _ = other.Cleanup() })
	if err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("a buffer_body beyond the shared bound: %v", err)
	}
	within := &Handler{Name: h.Name, Bin: h.Bin, SocketDir: h.SocketDir, BufferBody: 512 << 10}
	if err := within.Provision(testContext(t)); err != nil {
		t.Fatalf("a buffer_body within it: %v", err)
	}
	t.Cleanup(func() { _ = within.Cleanup() })
}
