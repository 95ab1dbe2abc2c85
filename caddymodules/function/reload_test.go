package function

import (
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/testenv"
)

// childPids lists the live children of pid.
func childPids(t *testing.T, pid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(rest) > 1 && rest[0] != "Z" && rest[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

func healthzPid(t *testing.T, stack *testenv.Stack) int {
	t.Helper()
	resp, err := http.Get(stack.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
	kids := childPids(t, stack.Cmd.Process.Pid)
	if len(kids) != 1 {
		t.Fatalf("caddy has children %v, want one function", kids)
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
	waitFor(t, "old process to stop", func() bool { return !alive(first) })
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
	waitFor(t, "function to stop with caddy", func() bool { return !alive(pid) })
}
