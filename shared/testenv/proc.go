package testenv

import (
	"os"
	"strconv"
	"strings"
)

// procStat returns the state and parent pid of pid from /proc, and false
// if it does not exist.
func procStat(pid string) (state, ppid string, ok bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return "", "", false
	}
	// The fields after the command name, which is in parentheses.
	rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(rest) < 2 {
		return "", "", false
	}
	return rest[0], rest[1], true
}

// Alive reports whether pid runs; a zombie waiting to be reaped has ended.
func Alive(pid int) bool {
	state, _, ok := procStat(strconv.Itoa(pid))
	return ok && state != "Z"
}

// Children lists the live child processes of pid.
func Children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	parent := strconv.Itoa(pid)
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, ppid, ok := procStat(e.Name()); ok && state != "Z" && ppid == parent {
			out = append(out, child)
		}
	}
	return out
}

// FunctionChildren lists the live child processes of pid that run the
// function name (argv[0] ends in /functions/<name>): Caddy's children
// include every function kept warm, not only those a test called.
func FunctionChildren(pid int, name string) []int {
	var out []int
	for _, child := range Children(pid) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(child) + "/cmdline")
		if bin, _, _ := strings.Cut(string(b), "\x00"); strings.HasSuffix(bin, "/functions/"+name) {
			out = append(out, child)
		}
	}
	return out
}

// ProcessesMentioning lists live processes whose command line or working
// directory mentions dir, as "pid command line".
func ProcessesMentioning(dir string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if state, _, ok := procStat(e.Name()); !ok || state == "Z" {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		cwd, _ := os.Readlink("/proc/" + e.Name() + "/cwd")
		if strings.Contains(string(cmdline), dir) || strings.HasPrefix(cwd, dir) {
			found = append(found, e.Name()+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}
