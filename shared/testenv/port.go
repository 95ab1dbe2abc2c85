package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// FreePort returns a loopback TCP port for a server the test is about to
// start, free a moment ago and claimed against every other caller.
//
// A port is picked at random below the kernel's ephemeral range (as
// deploy/stack/servers.sh picks its own), so that no listener bound to port
// 0 — a test's own provider or relay, in this process or in a package
// tested beside it — can be handed it between now and the server's bind.
// A claim is an flock on a file named for the port (in a folder per user),
// held until the process exits (or Main releases it), so two test
// processes never hand out the same port either.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := portRange()
	p, err := claimPort(filepath.Join(os.TempDir(), fmt.Sprintf("guardian-test-ports-%d", os.Getuid())), lo, hi)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// claimPort claims a free port in lo-hi with a lock file in dir.
func claimPort(dir string, lo, hi int) (int, error) {
	portMu.Lock()
	defer portMu.Unlock()
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, fmt.Errorf("testenv: port claims: %w", err)
	}
	for range 1000 {
		p := lo + rand.IntN(hi-lo+1)
		if claimed[p] != nil {
			continue
		}
		path := filepath.Join(dir, fmt.Sprint(p))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o666)
		if err != nil {
			continue // a claim file this user cannot open
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close() // another test process holds it
			continue
		}
		if !stillNamed(f, path) {
			f.Close() // released (removed) since it was opened: a new file may hold the claim
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			f.Close() // busy: a server of the stack, or outside the tests
			continue
		}
		ln.Close()
		claimed[p] = f
		return p, nil
	}
	return 0, fmt.Errorf("testenv: no free port in %d-%d", lo, hi)
}

// stillNamed reports whether path still names the open file f.
func stillNamed(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

// releasePorts gives up this process's claims and removes their files,
// which would otherwise pile up, one per port ever handed out. It removes
// each while still holding its lock, so a claimer that opened the file
// before finds it no longer named once it gets the lock (claimPort).
func releasePorts() {
	portMu.Lock()
	defer portMu.Unlock()
	for p, f := range claimed {
		_ = os.Remove(f.Name())
		f.Close()
		delete(claimed, p)
	}
}

var (
	portMu sync.Mutex
	// claimed keeps the lock files of the ports given out open (and so
	// locked) for the life of the process.
	claimed = map[int]*os.File{}
)

// portRange is the span FreePort picks from: 20000 up to the kernel's
// ephemeral range, or above it when the range starts too low to leave room.
func portRange() (lo, hi int) {
	lo, hi = 20000, 60000
	var elo, ehi int
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if _, err := fmt.Sscan(string(b), &elo, &ehi); err == nil {
			switch {
			case elo-lo >= 5000:
				hi = elo - 1
			case hi-ehi >= 5000:
				lo = ehi + 1
			}
		}
	}
	return lo, hi
}
