package main

import (
	"encoding/csv"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// deadlineWriter is a ResponseWriter whose writes take the time the test
// says, on a clock of the test's, and fail once past their deadline, as a
// connection's do.
type deadlineWriter struct {
	http.ResponseWriter
	clock    time.Time
	deadline time.Time
	take     time.Duration // how long the next write waits for the reader
}

func (d *deadlineWriter) SetWriteDeadline(t time.Time) error { d.deadline = t; return nil }

func (d *deadlineWriter) Write(b []byte) (int, error) {
	if !d.deadline.IsZero() && !d.clock.Add(d.take).Before(d.deadline) {
		if d.clock.Before(d.deadline) {
			d.clock = d.deadline
		}
		return 0, os.ErrDeadlineExceeded
	}
	d.clock = d.clock.Add(d.take)
	return len(b), nil
}

func TestPacedCountsOnlyTheReadersTime(t *testing.T) {
	const rate, grace = 1000, 10 * time.Second
	cases := []struct {
		name   string
		writes int           // of 1,000 bytes each
		take   time.Duration // each write's wait for the reader
		gap    time.Duration // the export's own time between writes
		cutAt  int           // the write that fails, -1 none
	}{
		// Every write waits as long as the floor allows: on time.
		{"a reader at the floor", 50, time.Second - time.Millisecond, 0, -1},
		// The export reads slowly between writes; the reader keeps up.
		{"a slow filter, a fast reader", 50, 0, time.Minute, -1},
		{"a slow filter, a reader at the floor", 50, time.Second - time.Millisecond, time.Minute, -1},
		// 1.5 s per 1,000 bytes: 0.5 s behind with each write, the 10 s of
		// grace gone by the end of the 20th.
		{"a reader under the floor", 50, 1500 * time.Millisecond, 0, 19},
		{"a slow filter, a reader under the floor", 50, 1500 * time.Millisecond, time.Minute, 19},
		{"a reader that stops", 5, time.Hour, 0, 0},
	}
	for _, tc := range cases {
		d := &deadlineWriter{clock: time.Unix(1e9, 0), take: tc.take}
		p := newPaced(d, rate, grace)
		p.now = func() time.Time { return d.clock }
		cut := -1
		for i := range tc.writes {
			if _, err := p.Write(make([]byte, 1000)); err != nil {
				cut = i
				break
			}
			d.clock = d.clock.Add(tc.gap)
		}
		if cut != tc.cutAt {
			t.Errorf("%s: cut at write %d, want %d", tc.name, cut, tc.cutAt)
		}
	}

	// No floor: no deadline is set.
	d := &deadlineWriter{clock: time.Unix(1e9, 0), take: time.Hour}
	if _, err := newPaced(d, 0, grace).Write(make([]byte, 1000)); err != nil || !d.deadline.IsZero() {
		t.Fatalf("rate 0: %v, deadline %v", err, d.deadline)
	}
}

// errWriter fails every write with err.
type errWriter struct {
	http.ResponseWriter
	err error
}

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

// Only a write that passed paced's deadline is logged as a cut for a
// slow reader; a connection closed under the export (which can fail a
// write before the request's context is cancelled) is a client gone.
func TestFlushedTellsACutFromAClientGone(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"past the deadline", &net.OpError{Op: "write", Net: "unix", Err: os.ErrDeadlineExceeded}, "audit export cut: its client read more slowly than the export's floor"},
		{"a closed connection", &net.OpError{Op: "write", Net: "unix", Err: syscall.EPIPE}, "audit export ended: its client went away"},
		{"a reset connection", &net.OpError{Op: "write", Net: "unix", Err: syscall.ECONNRESET}, "audit export ended: its client went away"},
	}
	for _, tc := range cases {
		core, logs := observer.New(zap.DebugLevel)
		h := &handler{log: zap.New(core), exportRate: ExportMinRate}
		cw := csv.NewWriter(errWriter{err: tc.err})
		_ = cw.Write([]string{"a"})
		if h.flushed(httptest.NewRequest("GET", "/api/v1/audit?format=csv", nil), cw, 1) {
			t.Fatalf("%s: flushed", tc.name)
		}
		if all := logs.All(); len(all) != 1 || all[0].Message != tc.want {
			t.Errorf("%s: logged %v, want %q", tc.name, all, tc.want)
		}
	}
}

// Through a real HTTP/1 server, whose failed writes cancel the request's
// context before they return: a client that stops reading is logged as a
// cut, one that hangs up (before any floor is reached) as gone.
func TestFlushedTellsACutFromAClientGoneOverAConnection(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	h := &handler{log: zap.New(core), exportRate: ExportMinRate}
	var rate atomic.Int64
	served := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { served <- struct{}{} }()
		cw := csv.NewWriter(newPaced(w, rate.Load(), 10*time.Millisecond))
		row := []string{strings.Repeat("x", 4096)}
		for i := 0; ; i++ {
			_ = cw.Write(row)
			if !h.flushed(r, cw, i) {
				return
			}
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name   string
		rate   int64 // the floor: one a reader on loopback clears only by reading, or none
		hangUp bool
		want   string
	}{
		{"a client that stops reading", 1 << 30, false, "audit export cut: its client read more slowly than the export's floor"},
		{"a client that hangs up", 0, true, "audit export ended: its client went away"},
	} {
		rate.Store(tc.rate)
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		if tc.hangUp {
			time.Sleep(50 * time.Millisecond)
			_ = conn.(*net.TCPConn).SetLinger(0) // a reset, as of a client killed mid-download
			_ = conn.Close()
		}
		<-served
		_ = conn.Close()
		if all := logs.TakeAll(); len(all) != 1 || all[0].Message != tc.want {
			t.Errorf("%s: logged %v, want %q", tc.name, all, tc.want)
		}
	}
}
