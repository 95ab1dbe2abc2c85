package chbackup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/testenv"
)

// tcpProxy forwards TCP connections from a local port to upstream: for
// each it dials upstream and hands both ends to serve, which starts the
// copying with spawn. The listener and every connection close with the
// test, and it waits for what serve spawned. serve is given the proxy:
// it runs before startTCPProxy's caller may have kept it.
type tcpProxy struct {
	ln       net.Listener
	upstream string
	serve    func(p *tcpProxy, client, server net.Conn)
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func startTCPProxy(t *testing.T, upstream string, serve func(p *tcpProxy, client, server net.Conn)) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, upstream: upstream, serve: serve}
	p.spawn(p.accept)
	t.Cleanup(func() {
		p.ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// spawn runs f on a goroutine the proxy's end waits for.
func (p *tcpProxy) spawn(f func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
}

func (p *tcpProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.serve(p, c, u)
	}
}

// stallProxy forwards TCP connections to a real server until it freezes:
// from then on it forwards nothing and stops reading from either side, as
// a hung peer or a dead link would, and holds the connections open until
// the test ends.
type stallProxy struct {
	*tcpProxy
	// after is how many bytes it forwards in the counted direction (to the
	// client when toClient, else to the server) before freezing; 0: only
	// freeze freezes it.
	after    int64
	toClient bool
	count    atomic.Int64
	// rate, when not 0, is how many bytes a second it forwards in the
	// counted direction: a slow link that keeps answering.
	rate int64

	frozen     chan struct{}
	freezeOnce sync.Once
	closed     chan struct{}
}

func newStallProxy(t *testing.T, upstream string, after int64, toClient bool) *stallProxy {
	t.Helper()
	p := &stallProxy{after: after, toClient: toClient, frozen: make(chan struct{}), closed: make(chan struct{})}
	p.start(t, upstream)
	return p
}

// newThrottledProxy forwards TCP connections to upstream, the bytes to
// it at rate bytes a second, and never freezes.
func newThrottledProxy(t *testing.T, upstream string, rate int64) *stallProxy {
	t.Helper()
	p := &stallProxy{rate: rate, frozen: make(chan struct{}), closed: make(chan struct{})}
	p.start(t, upstream)
	return p
}

func (p *stallProxy) start(t *testing.T, upstream string) {
	t.Helper()
	p.tcpProxy = startTCPProxy(t, upstream, func(tp *tcpProxy, c, u net.Conn) {
		tp.spawn(func() { p.pipe(u, c, !p.toClient) })
		tp.spawn(func() { p.pipe(c, u, p.toClient) })
	})
	// Runs before the proxy's own end (cleanups run last first): frozen
	// pipes wait for it.
	t.Cleanup(func() { close(p.closed) })
}

func (p *stallProxy) freeze() { p.freezeOnce.Do(func() { close(p.frozen) }) }

func (p *stallProxy) isFrozen() bool {
	select {
	case <-p.frozen:
		return true
	default:
		return false
	}
}

// pipe copies src to dst until either fails or the proxy freezes.
func (p *stallProxy) pipe(dst, src net.Conn, counted bool) {
	buf := make([]byte, 32<<10)
	for {
		if p.isFrozen() {
			<-p.closed
			return
		}
		n, err := src.Read(buf)
		b, froze := buf[:n], false
		if counted {
			b, froze = p.take(b)
			if p.rate > 0 && len(b) > 0 {
				time.Sleep(time.Duration(int64(len(b)) * int64(time.Second) / p.rate))
			}
		}
		if len(b) > 0 && (froze || !p.isFrozen()) {
			if _, werr := dst.Write(b); werr != nil {
				err = werr
			}
		}
		if err != nil {
			if p.isFrozen() {
				<-p.closed // a dead link tells neither side
			} else {
				src.Close()
				dst.Close()
			}
			return
		}
	}
}

// take returns the part of b to forward, and whether the proxy froze at
// its end.
func (p *stallProxy) take(b []byte) ([]byte, bool) {
	if p.after <= 0 {
		return b, false
	}
	before := p.count.Add(int64(len(b))) - int64(len(b))
	if before+int64(len(b)) < p.after {
		return b, false
	}
	p.freeze()
	return b[:max(p.after-before, 0)], true
}

// sendTimeoutProxy stands in front of ClickHouse's HTTP interface and
// does what ClickHouse does with an answer it cannot send for
// http_send_timeout: a write to the client that waits longer than limit
// aborts the connection.
type sendTimeoutProxy struct {
	*tcpProxy
	limit     time.Duration
	abandoned atomic.Bool
}

func newSendTimeoutProxy(t *testing.T, upstream string, limit time.Duration) *sendTimeoutProxy {
	t.Helper()
	p := &sendTimeoutProxy{limit: limit}
	p.tcpProxy = startTCPProxy(t, upstream, func(tp *tcpProxy, c, u net.Conn) {
		// Little buffering on the way to the client, as a server's own
		// socket has: the wait shows soon after the client stops reading.
		_ = c.(*net.TCPConn).SetWriteBuffer(64 << 10)
		tp.spawn(func() {
			_, _ = io.Copy(u, c)
			c.Close()
			u.Close()
		})
		tp.spawn(func() { p.answer(c, u) })
	})
	return p
}

// answer copies the server's answer to the client, giving up on a write
// that waits longer than limit.
func (p *sendTimeoutProxy) answer(c, u net.Conn) {
	defer c.Close()
	defer u.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			_ = c.SetWriteDeadline(time.Now().Add(p.limit))
			if _, werr := c.Write(buf[:n]); werr != nil {
				if errors.Is(werr, os.ErrDeadlineExceeded) {
					p.abandoned.Store(true)
				}
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// shortenPush sets the fan-out's push timeout to d for t. The tests that
// change this package's timeouts are the only ones not parallel: Go
// resumes the parallel ones only once every test that is not has ended.
func shortenPush(t *testing.T, d time.Duration) {
	old := pushTimeout
	pushTimeout = d
	t.Cleanup(func() { pushTimeout = old })
}

// shortenStall sets the SFTP stall timeout to d for t.
func shortenStall(t *testing.T, d time.Duration) {
	old := sftpStallTimeout
	sftpStallTimeout = d
	t.Cleanup(func() { sftpStallTimeout = old })
}

// viaProxy returns target with its address replaced by p's, and pins
// srv's host key for p's address in knownHosts.
func viaProxy(t *testing.T, target Target, p *stallProxy, srv *testenv.SFTP, knownHosts string) Target {
	t.Helper()
	f, err := os.OpenFile(knownHosts, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(knownhosts.Line([]string{knownhosts.Normalize(p.addr())}, srv.HostKey) + "\n"); err != nil {
		t.Fatal(err)
	}
	target.Host, target.Port = "127.0.0.1", p.port()
	return target
}

// addBulk adds a table of rows rows of 16 random-looking bytes each: a
// blob that does not compress, so that it fills every buffer on its way.
func addBulk(t *testing.T, f *fixture, rows int) {
	t.Helper()
	db := quoteIdent(f.cfg.ClickHouse.Database)
	f.exec(t, "CREATE TABLE "+db+".bulk (n UInt64, h FixedString(16)) ENGINE = MergeTree() ORDER BY n")
	f.exec(t, "INSERT INTO "+db+".bulk SELECT number, MD5(toString(number)) FROM system.numbers LIMIT "+strconv.Itoa(rows))
}

func TestFramesCountsPacketsAcrossWrites(t *testing.T) {
	t.Parallel()
	packet := func(n int) []byte {
		b := make([]byte, 4+n)
		binary.BigEndian.PutUint32(b, uint32(n))
		return b
	}
	var stream []byte
	for _, n := range []int{5, 0, 1, 32 << 10, 3} {
		stream = append(stream, packet(n)...)
	}
	for _, step := range []int{1, 2, 3, 4, 7, 1000, len(stream)} {
		var f frames
		got := 0
		for i := 0; i < len(stream); i += step {
			got += f.count(stream[i:min(i+step, len(stream))])
		}
		if got != 5 || f.left != 0 || f.nhead != 0 {
			t.Errorf("in pieces of %d: %d packets, %d bytes left, %d of a header", step, got, f.left, f.nhead)
		}
	}
}

// A request the server never answers fails once the stall timeout has
// passed, with the stall as the reason, and closing the session does not
// wait for the server either.
func TestAStalledRequestFailsAndClosesTheConnection(t *testing.T) {
	shortenStall(t, time.Second)
	srv := testenv.SFTPServer(t)
	p := newStallProxy(t, srv.Addr, 0, false)
	target, err := ParseTarget(srv.Target("backups"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{SSHKeyFile: srv.KeyPath, KnownHostsFile: filepath.Join(t.TempDir(), "known_hosts")}
	target = viaProxy(t, target, p, srv, cfg.KnownHostsFile)
	auth, err := loadSSHAuth(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := dial(context.Background(), auth, target)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.Stat(srv.Root); err != nil {
		t.Fatalf("stat before the stall: %v", err)
	}
	time.Sleep(2 * time.Second) // idle is not stalled
	if r.dog.stalled() != nil {
		t.Fatal("an idle connection was closed")
	}
	p.freeze()
	start := time.Now()
	_, err = r.c.Stat(srv.Root)
	if err == nil || r.explain(err) == nil || !strings.Contains(r.explain(err).Error(), "stalled") {
		t.Fatalf("stat of a stalled server: %v (%v)", err, r.dog.stalled())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the stall took %v to detect", d)
	}
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs on a stalled server")
	}
}

// A target that stops reading in the middle of a blob, without failing,
// drops out once the stall timeout has passed: the other target receives
// the whole set, and the run's error and result name the stalled one.
func TestAStalledTargetDropsOutAndTheOthersCarryOn(t *testing.T) {
	shortenStall(t, 2*time.Second)
	f := newFixture(t, 2)
	addBulk(t, f, 1<<20) // 16 MiB that do not compress
	// The first target, which the fan-out writes to first, freezes after
	// the first MiB it is sent: well inside the bulk blob.
	p := newStallProxy(t, f.srvs[0].Addr, 1<<20, false)
	f.cfg.Targets[0] = viaProxy(t, f.cfg.Targets[0], p, f.srvs[0], f.cfg.KnownHostsFile)
	stalled := f.cfg.Targets[0].String()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f.tick.Add(1)
	info, err := Backup(ctx, f.cfg)
	if ctx.Err() != nil {
		t.Fatalf("the run waited for the stalled target until its time limit: %v", err)
	}
	if !p.isFrozen() {
		t.Fatal("the proxy never froze: the test did not stall the target")
	}
	if err == nil || errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), stalled+": write: stalled") {
		t.Fatalf("backup: %v", err)
	}
	if info.Targets[0].OK || !strings.Contains(info.Targets[0].Error, "stalled") || !info.Targets[1].OK {
		t.Fatalf("targets: %+v", info.Targets)
	}
	if m := f.manifest(t, 1, info.Name); len(m.Tables) != info.Tables || info.Blobs == 0 {
		t.Errorf("the other target's manifest has %d tables, the run %d (%d blobs)", len(m.Tables), info.Tables, info.Blobs)
	}
	f.onlySecondTargetHolds(t, info)
}

// onlySecondTargetHolds checks that target 1 holds info's set whole (its
// LATEST, and a verification of it) and target 0, which stalled, none.
func (f *fixture) onlySecondTargetHolds(t *testing.T, info SetInfo) {
	t.Helper()
	if got := f.latest(t, 1); got != info.Name {
		t.Errorf("LATEST on the other target: %q, want %q", got, info.Name)
	}
	if _, err := os.Stat(filepath.Join(f.root[0], latestName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stalled target has a LATEST: %v", err)
	}
	cfg := f.cfg
	cfg.Targets = cfg.Targets[1:]
	rep, err := VerifyLatest(context.Background(), cfg, f.id)
	if err != nil || !rep.Targets[0].OK || rep.Targets[0].Rows != info.Rows {
		t.Errorf("verify of the other target: %v %+v (rows %d)", err, rep, info.Rows)
	}
}

// A ClickHouse answer that stops in the middle fails the run once it has
// sent nothing for the idle timeout, and says so.
func TestAClickHouseDumpThatStopsFailsTheRun(t *testing.T) {
	old := chIdleTimeout
	chIdleTimeout = 2 * time.Second
	t.Cleanup(func() { chIdleTimeout = old })
	f := newFixture(t, 1)
	addBulk(t, f, 1<<18) // 4 MiB
	u := strings.TrimPrefix(f.cfg.HTTPURL, "http://")
	p := newStallProxy(t, strings.TrimSuffix(u, "/"), 1<<20, true)
	f.cfg.HTTPURL = "http://" + p.addr()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f.tick.Add(1)
	info, err := Backup(ctx, f.cfg)
	if ctx.Err() != nil {
		t.Fatalf("the run waited for ClickHouse until its time limit: %v", err)
	}
	if !p.isFrozen() {
		t.Fatal("the proxy never froze: the test did not stall the dump")
	}
	want := fmt.Sprintf("clickhouse sent nothing for %v", chIdleTimeout)
	if err == nil || !strings.Contains(err.Error(), "table bulk") || !strings.Contains(err.Error(), want) {
		t.Fatalf("backup: %v", err)
	}
	if info.Targets[0].OK {
		t.Errorf("targets: %+v", info.Targets)
	}
	if _, err := os.Stat(filepath.Join(f.root[0], latestName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the target has a LATEST: %v", err)
	}
}

// A target that stops reading in the middle of a blob holds up the
// fan-out, which stops reading the dump: ClickHouse abandons an answer it
// cannot send for http_send_timeout (30 s on current versions, 6 s here),
// which would lose the set for every target. The stalled target is
// dropped well before (the push timeout, 2 s here), long before the
// watchdog would notice, and the other target gets the whole set.
func TestATargetHoldingUpTheDumpIsDroppedBeforeClickHouseGivesUp(t *testing.T) {
	shortenPush(t, 2*time.Second)
	shortenStall(t, 30*time.Second)
	f := newFixture(t, 2)
	addBulk(t, f, 1<<21) // 32 MiB that do not compress: more than every buffer holds
	ch := newSendTimeoutProxy(t, strings.TrimSuffix(strings.TrimPrefix(f.cfg.HTTPURL, "http://"), "/"), 6*time.Second)
	f.cfg.HTTPURL = "http://" + ch.addr()
	p := newStallProxy(t, f.srvs[0].Addr, 1<<20, false)
	f.cfg.Targets[0] = viaProxy(t, f.cfg.Targets[0], p, f.srvs[0], f.cfg.KnownHostsFile)
	stalled := f.cfg.Targets[0].String()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f.tick.Add(1)
	info, err := Backup(ctx, f.cfg)
	if !p.isFrozen() {
		t.Fatal("the proxy never froze: the test did not stall the target")
	}
	if ch.abandoned.Load() {
		t.Fatalf("ClickHouse abandoned the dump, which waited for the stalled target over %v: %v", ch.limit, err)
	}
	if err == nil || errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), stalled+": write: stalled: the target did not take") {
		t.Fatalf("backup: %v", err)
	}
	if info.Targets[0].OK || !info.Targets[1].OK {
		t.Fatalf("targets: %+v", info.Targets)
	}
	f.onlySecondTargetHolds(t, info)
}

// A slow target that keeps taking data (1 MiB/s here, a megabyte per push
// timeout of 3 s) holds up the fan-out for far longer than the push
// timeout in all, but never for one push: it is not dropped.
func TestASlowTargetIsNotDropped(t *testing.T) {
	shortenPush(t, 3*time.Second)
	f := newFixture(t, 2)
	addBulk(t, f, 1<<20) // 16 MiB that do not compress: more than every buffer holds
	p := newThrottledProxy(t, f.srvs[0].Addr, 1<<20)
	f.cfg.Targets[0] = viaProxy(t, f.cfg.Targets[0], p, f.srvs[0], f.cfg.KnownHostsFile)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f.tick.Add(1)
	start := time.Now()
	info, err := Backup(ctx, f.cfg)
	took := time.Since(start)
	if err != nil || !info.Targets[0].OK || !info.Targets[1].OK {
		t.Fatalf("backup through a slow link: %v %+v", err, info.Targets)
	}
	if took < 3*pushTimeout {
		t.Fatalf("the run took %v: the throttle did not hold up the fan-out, the test proves nothing", took)
	}
	for i := range f.root {
		if got := f.latest(t, i); got != info.Name {
			t.Errorf("LATEST on target %d: %q, want %q", i, got, info.Name)
		}
	}
	if m := f.manifest(t, 0, info.Name); len(m.Tables) != info.Tables || info.Blobs == 0 {
		t.Errorf("the slow target's manifest has %d tables, the run %d (%d blobs)", len(m.Tables), info.Tables, info.Blobs)
	}
}

// An INSERT whose data ClickHouse stops taking (a server that hangs, a
// half-open connection) fails once the idle timeout has passed without
// the transport asking for more, instead of holding the verification
// until its time limit. A source that is slow (time inside Read) does
// not count.
func TestAnInsertClickHouseStopsReadingFails(t *testing.T) {
	old := chIdleTimeout
	chIdleTimeout = time.Second
	t.Cleanup(func() { chIdleTimeout = old })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	ch := newCHClient(Config{HTTPURL: "http://" + ln.Addr().String()})
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- ch.insert(context.Background(), "t", zeros{}) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "took nothing of the data for 1s") {
			t.Fatalf("insert into a server that stopped reading: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an insert into a server that stopped reading hangs")
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("gave up after %v, before the idle timeout", d)
	}

	// A slow source: each Read takes longer than the timeout, and the
	// server takes everything it is given.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	ch = newCHClient(Config{HTTPURL: srv.URL})
	if err := ch.insert(context.Background(), "t", &slowReader{n: 3, pause: 1500 * time.Millisecond}); err != nil {
		t.Fatalf("a slow source counted as a stalled server: %v", err)
	}
}

// zeros never ends.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// slowReader gives n bytes, pausing before each.
type slowReader struct {
	n     int
	pause time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.pause)
	s.n--
	p[0] = 'x'
	return 1, nil
}

// A redirect is not followed: Go would carry the password header (it
// strips only Authorization and Cookie) and the data to another host.
func TestARedirectDoesNotTakeThePasswordElsewhere(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/", http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	ch := newCHClient(Config{HTTPURL: srv.URL, ClickHouse: config.ClickHouse{User: "u", Password: "S3cret"}})
	var ce *chError
	if err := ch.exec(context.Background(), "SELECT 1"); !errors.As(err, &ce) || ce.Status != http.StatusTemporaryRedirect {
		t.Fatalf("a redirect: %v", err)
	}
	if err := ch.insert(context.Background(), "t", strings.NewReader("data")); !errors.As(err, &ce) {
		t.Fatalf("an insert redirected: %v", err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the redirect was followed %d times", n)
	}
}
