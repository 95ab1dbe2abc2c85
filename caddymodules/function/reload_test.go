package function

import (
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

// freshConn opens a connection per request: a reload shuts the old
// server down, which closes kept-alive connections, and a request racing
// that close reads EOF (a client's ordinary retry case, not this test's).
var freshConn = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func healthzPid(t *testing.T, stack *testenv.Stack) int {
	t.Helper()
	// Even a fresh connection, accepted by the old server in the instant
	// it shuts down, can read EOF: retried, as a client would. What this
	// test checks is which function process answers.
	var resp *http.Response
	var err error
	for range 5 {
		if resp, err = freshConn.Get(stack.URL + "/healthz"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
	kids := testenv.FunctionChildren(stack.Cmd.Process.Pid, "healthz")
	if len(kids) != 1 {
		t.Fatalf("caddy runs healthz as %v, want one process", kids)
	}
	return kids[0]
}

func TestReloadKeepsAnUnchangedFunctionAndReplacesAChangedOne(t *testing.T) {
	t.Parallel()
	env := testenv.StackEnv(t)
	stack := testenv.StartStack(t, env)
	first := healthzPid(t, stack)

	stack.Reload(t, nil)
	if again := healthzPid(t, stack); again != first {
		t.Fatalf("an unchanged function was restarted by a reload: pid %d, then %d", first, again)
	}

	// A changed function config means a new process; the old one stops
	// when the old config is unloaded. (Placeholders such as this one are
	// expanded by the reloading command.)
	stack.Reload(t, map[string]string{"GUARDIAN_FUNCTION_IDLE_TIMEOUT": "4m"})
	waitFor(t, "old process to stop", func() bool { return !testenv.Alive(first) })
	if replaced := healthzPid(t, stack); replaced == first {
		t.Fatal("changed function kept its old process")
	}
}

func TestShutdownStopsFunctions(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t, testenv.StackEnv(t))
	pid := healthzPid(t, stack)
	if err := stack.Cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "function to stop with caddy", func() bool { return !testenv.Alive(pid) })
}

// A reload that changes a function's settings unloads the old instance
// while requests still run on it. They finish on the old process, which
// stops after them; the unload itself does not wait for them (it runs under
// Caddy's config lock), nor does it cut them at the stop grace.
func TestReplacedInstanceLetsItsRequestsFinish(t *testing.T) {
	t.Parallel()
	old := newHandler(t, &Handler{})
	// A grace far below the request's length: stopping the process at
	// unload would kill the request.
	old.inst.spec.stopGrace = 100 * time.Millisecond
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		rec, err := call(old, "/sleep?d=2s")
		done <- result{rec.Code, err}
	}()
	waitFor(t, "the request to reach the function", func() bool {
		old.inst.mu.Lock()
		defer old.inst.mu.Unlock()
		return old.inst.inflight == 1 && old.inst.proc != nil
	})
	old.inst.mu.Lock()
	p := old.inst.proc
	old.inst.mu.Unlock()

	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		t.Fatalf("the unload waited for the request (%d, %v)", r.code, r.err)
	default:
	}
	if p.exited() {
		t.Fatal("the process stopped with a request in flight")
	}
	r := <-done
	if r.err != nil || r.code != http.StatusOK {
		t.Fatalf("the request in flight at the unload: %d, %v; want 200", r.code, r.err)
	}
	waitFor(t, "the replaced process to stop after its request", p.exited)
	// A second Cleanup must not drop another config's hold on the pool.
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
}
