package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// microPackages hold the edge modules' micro-benchmarks (Benchmark* beside
// the code).
var microPackages = []string{"./caddymodules/...", "./shared/apikey", "./shared/session"}

// wantedMicro names benchmarks the issue asks for that may not exist yet:
// package directory and what the benchmark would measure.
var wantedMicro = []struct{ dir, what string }{
	{"shared/session", "HS256 session token verification (JWT verify, uncached)"},
	{"caddymodules/function", "guardian_function's proxy path (ServeHTTP to a warm function)"},
	{"caddymodules/problem", "problem+json rendering"},
}

// microResult is the output of the micro-benchmarks.
type microResult struct {
	Command    string       `json:"command"`
	Benchtime  string       `json:"benchtime"`
	Benchmarks []microBench `json:"benchmarks"`
	Missing    []string     `json:"missing,omitempty"`
	Error      string       `json:"error,omitempty"`
	lines      []string
}

// microBench is one benchmark line.
type microBench struct {
	Pkg      string             `json:"pkg"`
	Name     string             `json:"name"`
	N        int64              `json:"n"`
	NsOp     float64            `json:"ns_per_op"`
	BOp      float64            `json:"bytes_per_op"`
	AllocsOp float64            `json:"allocs_per_op"`
	Extra    map[string]float64 `json:"extra,omitempty"`
}

// runMicro runs the micro-benchmarks once, one package at a time (-p 1,
// so two packages never compete for the CPUs), against our servers
// (GUARDIAN_TEST_SERVERS_ENV, as `make test` does).
func (b *bench) runMicro(ctx context.Context, benchtime string) microResult {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", "1", "-p", "1", "-benchtime", benchtime}, microPackages...)
	res := microResult{Command: "go " + strings.Join(args, " "), Benchtime: benchtime}
	for _, w := range wantedMicro {
		if !hasBenchmark(filepath.Join(b.modDir, w.dir)) {
			res.Missing = append(res.Missing, w.dir+": "+w.what)
		}
	}
	fmt.Fprintf(os.Stderr, "%s ...\n", res.Command)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = b.modDir
	cmd.Env = append(os.Environ(), "GUARDIAN_TEST_SERVERS_ENV="+filepath.Join(b.stack.dir, "servers.env"), "GUARDIAN_TEST_BIN_DIR="+filepath.Join(b.dir, "testbin"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	pkg := ""
	for line := range strings.Lines(out.String()) {
		line = strings.TrimRight(line, "\n")
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p
			res.lines = append(res.lines, line)
			continue
		}
		if mb, ok := parseBenchLine(line); ok {
			mb.Pkg = pkg
			res.Benchmarks = append(res.Benchmarks, mb)
			res.lines = append(res.lines, line)
		}
	}
	if err != nil {
		tail := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
		res.Error = fmt.Sprintf("%v\n%s", err, strings.Join(tail[max(0, len(tail)-30):], "\n"))
	}
	return res
}

// parseBenchLine reads "BenchmarkX-2  N  v unit  v unit ...".
func parseBenchLine(line string) (microBench, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
		return microBench{}, false
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return microBench{}, false
	}
	mb := microBench{Name: f[0], N: n}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return microBench{}, false
		}
		switch f[i+1] {
		case "ns/op":
			mb.NsOp = v
		case "B/op":
			mb.BOp = v
		case "allocs/op":
			mb.AllocsOp = v
		default:
			if mb.Extra == nil {
				mb.Extra = map[string]float64{}
			}
			mb.Extra[f[i+1]] = v
		}
	}
	return mb, true
}

// hasBenchmark reports whether a _test.go file of dir declares a Benchmark.
func hasBenchmark(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	for _, f := range files {
		if data, err := os.ReadFile(f); err == nil && bytes.Contains(data, []byte("\nfunc Benchmark")) {
			return true
		}
	}
	return false
}
