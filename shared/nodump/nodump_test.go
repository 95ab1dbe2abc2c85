package nodump

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestSealInAChild seals a child process (sealing the test binary would
// keep it from dumping a core on a crash), which reports the flag.
func TestSealInAChild(t *testing.T) {
	if os.Getenv("NODUMP_CHILD") == "1" {
		if Sealed() {
			os.Stdout.WriteString("sealed before Seal\n")
			os.Exit(1)
		}
		if err := Seal(); err != nil {
			os.Stdout.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		if !Sealed() {
			os.Stdout.WriteString("not sealed after Seal\n")
			os.Exit(1)
		}
		os.Stdout.WriteString("ok\n")
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSealInAChild$")
	cmd.Env = append(os.Environ(), "NODUMP_CHILD=1")
	out, err := cmd.Output()
	if err != nil || !strings.HasPrefix(string(out), "ok") {
		t.Fatalf("child: %v %q", err, out)
	}
}
