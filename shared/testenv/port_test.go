package testenv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestClaimPortSkipsClaimedAndBusyPorts gives claimPort a span of three
// ports: one claimed by "another process" (a lock on its file through
// another open file), one a listener holds. Only the third may come back,
// once.
func TestClaimPortSkipsClaimedAndBusyPorts(t *testing.T) {
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	b := busy.Addr().(*net.TCPAddr).Port
	// A span of three around the busy port, inside 1024-65535.
	lo := b - 1
	if b+1 > 65535 {
		lo = b - 2
	}
	ports := []int{lo, lo + 1, lo + 2}
	var locked, free int
	for _, p := range ports {
		if p == b {
			continue
		}
		if locked == 0 {
			locked = p
		} else {
			free = p
		}
	}
	if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", free)); err != nil {
		t.Skipf("port %d is in use here: %v", free, err)
	} else {
		ln.Close()
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprint(locked)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}

	got, err := claimPort(dir, ports[0], ports[2])
	if err != nil || got != free {
		t.Fatalf("claimPort = %d, %v; want %d (busy %d, claimed %d)", got, err, free, b, locked)
	}
	if again, err := claimPort(dir, ports[0], ports[2]); err == nil {
		t.Fatalf("claimPort handed out %d after every port of the span was taken", again)
	}
	portMu.Lock()
	claimed[free].Close()
	delete(claimed, free)
	portMu.Unlock()
}

func TestPortRangeIsBelowTheEphemeralRange(t *testing.T) {
	lo, hi := portRange()
	if lo < 1024 || hi > 65535 || hi-lo < 4999 {
		t.Fatalf("portRange = %d-%d", lo, hi)
	}
	var elo, ehi int
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skip(err)
	}
	if _, err := fmt.Sscan(string(b), &elo, &ehi); err != nil {
		t.Fatal(err)
	}
	if elo-20000 < 5000 && 60000-ehi < 5000 {
		t.Skipf("the ephemeral range %d-%d leaves no room for FreePort's", elo, ehi)
	}
	if hi >= elo && lo <= ehi {
		t.Fatalf("portRange %d-%d overlaps the ephemeral range %d-%d", lo, hi, elo, ehi)
	}
}

// Main gives up the process's claims and removes their files. A process
// that opened a claim file before its removal, and gets its lock after,
// must not take that for a claim: the port is claimed through a new file.
func TestReleasedClaimLeavesNoFileAndItsOldFileClaimsNothing(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if got, err := claimPort(dir, p, p); err != nil || got != p {
		t.Skipf("claimPort = %d, %v (port %d taken meanwhile?)", got, err, p)
	}
	path := filepath.Join(dir, fmt.Sprint(p))
	late, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()

	releasePorts()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the released claim's file is still there: %v", err)
	}
	if err := syscall.Flock(int(late.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the released file is still locked: %v", err)
	}
	if stillNamed(late, path) {
		t.Fatal("a file opened before the release passes for the claim file")
	}
	if got, err := claimPort(dir, p, p); err != nil || got != p {
		t.Fatalf("claiming the released port again: %d, %v", got, err)
	}
	releasePorts()
}
