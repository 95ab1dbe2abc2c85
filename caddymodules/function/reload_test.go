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
