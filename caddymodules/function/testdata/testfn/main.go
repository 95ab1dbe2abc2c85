// Command testfn is a function binary for the runtime's tests: it answers
// with its pid, its environment or a sum of the body it read, and can
// crash, hang or refuse to get ready on request.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/nodump"
	"github.com/glassmkr/guardian/shared/problem"
)

func main() {
	// Before fnserve.Main seals the process: a function named ...Unsealed...
	// checks that the runtime has sent nothing on the settings socket yet,
	// and exits (its start fails) if it has. Its name is all it can go by:
	// every other setting comes over that socket.
	if strings.Contains(os.Getenv(fnserve.EnvName), "Unsealed") {
		fds := []unix.PollFd{{Fd: 5, Events: unix.POLLIN}}
		if n, _ := unix.Poll(fds, 300); n > 0 {
			fmt.Fprintln(os.Stderr, "settings arrived before the function was sealed")
			os.Exit(7)
		}
	}
	fnserve.Main(setup)
}

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	if os.Getenv("TESTFN_FAIL_START") != "" {
		return nil, nil, fmt.Errorf("told to fail")
	}
	if os.Getenv("TESTFN_NEVER_READY") != "" {
		<-ctx.Done()
		return nil, nil, ctx.Err()
	}
	log.Info("testfn ready")
	mux := http.NewServeMux()
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "the function's own failure", http.StatusServiceUnavailable)
	})
	// /problem?code=C&pad=N: a 503 problem+json of code C, its detail N
	// bytes long.
	mux.HandleFunc("/problem", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("pad"))
		problem.Write(w, problem.New(http.StatusServiceUnavailable, r.URL.Query().Get("code"), strings.Repeat("x", min(n, 1<<20))))
	})
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d", os.Getpid())
	})
	// /early sends 103 Early Hints before its answer, as any function may.
	mux.HandleFunc("/early", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("X-Final", "yes")
		fmt.Fprintf(w, "%d", os.Getpid())
	})
	// /switch agrees to the protocol the request asks for.
	mux.HandleFunc("/switch", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", r.Header.Get("Upgrade"))
		w.WriteHeader(http.StatusSwitchingProtocols)
	})
	mux.HandleFunc("/authfail", func(w http.ResponseWriter, r *http.Request) {
		// A function refusing a credential it checks itself.
		w.Header().Set("Guardian-Auth-Failure", r.URL.Query().Get("reason"))
		w.WriteHeader(http.StatusUnauthorized)
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(os.Environ())
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(r.Header)
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // trailers arrive after the body
		_ = json.NewEncoder(w).Encode(r.Trailer)
	})
	// /log?n=N writes a line of N bytes to stderr, as a function logging
	// something long.
	mux.HandleFunc("/log", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		_, _ = os.Stderr.Write(append(bytes.Repeat([]byte("x"), n), '\n'))
		fmt.Fprint(w, "logged")
	})
	mux.HandleFunc("/sealed", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, nodump.Sealed())
	})
	mux.HandleFunc("/query", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.URL.RawQuery)
	})
	mux.HandleFunc("/sum", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	})
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		os.Exit(3)
	})
	// /freeze stops the whole process (SIGSTOP): alive, answering nothing,
	// not even its server's own 404s.
	mux.HandleFunc("/freeze", func(w http.ResponseWriter, r *http.Request) {
		_ = unix.Kill(os.Getpid(), unix.SIGSTOP)
		select {} // the signal lands a moment later: nothing is answered meanwhile
	})
	// /dial?network=unix&addr=PATH: what connecting gives this process
	// ("ok" or the error), as a compromised function would try it.
	mux.HandleFunc("/dial", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.Dial(r.URL.Query().Get("network"), r.URL.Query().Get("addr"))
		if err != nil {
			fmt.Fprint(w, err.Error())
			return
		}
		c.Close()
		fmt.Fprint(w, "ok")
	})
	// /uring: what setting up an io_uring gives this process ("ok" or
	// the error): its socket operation would make a unix socket without
	// the socket system call.
	mux.HandleFunc("/uring", func(w http.ResponseWriter, r *http.Request) {
		var params [120]byte // struct io_uring_params, zeroed
		fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params)), 0)
		if errno != 0 {
			fmt.Fprint(w, errno.Error())
			return
		}
		unix.Close(int(fd))
		fmt.Fprint(w, "ok")
	})
	// /deadlock takes a lock its first request never gives back, and
	// does not heed its request's end: the server still answers, every
	// request here waits forever.
	var deadlock sync.Mutex
	mux.HandleFunc("/deadlock", func(w http.ResponseWriter, r *http.Request) {
		deadlock.Lock()
		deadlock.Lock()
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		select {
		case <-time.After(d):
			fmt.Fprintf(w, "%d", os.Getpid())
		case <-r.Context().Done():
		}
	})
	return mux, nil, nil
}
