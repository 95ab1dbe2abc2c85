package chbackup

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshAuth is the client key and the pinned host keys, read once per run.
type sshAuth struct {
	signer     ssh.Signer
	knownHosts ssh.HostKeyCallback
	file       string
}

func loadSSHAuth(cfg Config) (*sshAuth, error) {
	b, err := os.ReadFile(cfg.SSHKeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot read %s", EnvSSHKey, cfg.SSHKeyFile)
	}
	signer, err := ssh.ParsePrivateKey(b)
	clear(b)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("%s: %s is protected by a passphrase, which is not supported", EnvSSHKey, cfg.SSHKeyFile)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %s is not an SSH private key", EnvSSHKey, cfg.SSHKeyFile)
	}
	cb, err := knownhosts.New(cfg.KnownHostsFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", EnvKnownHosts, err)
	}
	return &sshAuth{signer: signer, knownHosts: cb, file: cfg.KnownHostsFile}, nil
}

// remote is an SFTP session with one target.
type remote struct {
	target      Target
	conn        *ssh.Client
	c           *sftp.Client
	dog         *watchdog
	posixRename bool
	fsync       bool
	stopClose   func() bool
}

// dial connects to t. The server's host key must be one known_hosts pins
// for t's address: an unknown key is refused like a changed one (no trust
// on first use). Cancelling ctx closes the connection, which ends any
// transfer in progress; so does a stall (see watchdog).
func dial(ctx context.Context, auth *sshAuth, t Target) (*remote, error) {
	addr := t.Addr()
	var hostKeyErr error
	cfg := &ssh.ClientConfig{
		User: t.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(auth.signer)},
		HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
			err := auth.knownHosts(host, remote, key)
			if err != nil {
				hostKeyErr = err
			}
			return err
		},
		HostKeyAlgorithms: pinnedAlgorithms(auth.knownHosts, addr),
		Timeout:           30 * time.Second,
	}
	d := net.Dialer{Timeout: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		var ke *knownhosts.KeyError
		switch {
		case errors.As(hostKeyErr, &ke) && len(ke.Want) == 0:
			return nil, fmt.Errorf("%s: refused: the server's host key is not in %s (no trust on first use)", t, auth.file)
		case errors.As(hostKeyErr, &ke):
			return nil, fmt.Errorf("%s: refused: the server's host key differs from the one %s pins", t, auth.file)
		case hostKeyErr != nil:
			return nil, fmt.Errorf("%s: refused: host key: %v", t, hostKeyErr)
		}
		return nil, fmt.Errorf("%s: ssh: %w", t, err)
	}
	conn := ssh.NewClient(sc, chans, reqs)
	dog := newWatchdog(sftpStallTimeout, func() { conn.Close() })
	// The handshake's deadline also bounds opening the SFTP session, whose
	// channel requests the watchdog does not see.
	c, err := newSFTP(conn, dog)
	if err != nil {
		dog.stop()
		conn.Close()
		return nil, fmt.Errorf("%s: sftp: %w", t, err)
	}
	_ = nc.SetDeadline(time.Time{})
	r := &remote{target: t, conn: conn, c: c, dog: dog}
	_, r.posixRename = c.HasExtension("posix-rename@openssh.com")
	_, r.fsync = c.HasExtension("fsync@openssh.com")
	r.stopClose = context.AfterFunc(ctx, func() { conn.Close() })
	return r, nil
}

// pinnedAlgorithms lists the host key algorithms of the keys known_hosts
// holds for addr, so that the server presents one of those rather than
// another kind of key that would then be "unknown".
func pinnedAlgorithms(cb ssh.HostKeyCallback, addr string) []string {
	err := cb(knownhosts.Normalize(addr), &net.TCPAddr{IP: net.IPv4zero}, probeKey{})
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	var algs []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, s := range a {
			if !seen[s] {
				seen[s] = true
				algs = append(algs, s)
			}
		}
	}
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
		default:
			add(t)
		}
	}
	return algs
}

// probeKey is a key no known_hosts line holds.
type probeKey struct{}

func (probeKey) Type() string                        { return "guardian-probe" }
func (probeKey) Marshal() []byte                     { return []byte("guardian-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe") }

// Close ends the session. The connection goes first: closing the SFTP
// client waits for the server to end the session, which a dead or stalled
// server never does, and nothing is in flight by now.
func (r *remote) Close() error {
	r.stopClose()
	r.dog.stop()
	err := r.conn.Close()
	_ = r.c.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// explain returns err, which an operation on r returned, prefixed with
// the stall that made the watchdog close r's connection, if it did: the
// operation itself only sees a lost connection.
func (r *remote) explain(err error) error {
	if s := r.dog.stalled(); s != nil && err != nil && !errors.Is(err, s) {
		return fmt.Errorf("%w: %w", s, err)
	}
	return err
}

// abort closes r's connection because of err (a stall the uploader saw),
// which explain then gives as the reason of whatever fails on r.
func (r *remote) abort(err error) { r.dog.abort(err) }

// sftpStallTimeout is how long a target may answer nothing at all while
// requests wait for it before it counts as failed (a hung disk, a
// half-open connection, a peer that stopped reading). Answers come per
// 32 KiB write, so a slow WAN or WireGuard link answers within seconds;
// an fsync of a large file on a busy disk, within minutes. It covers
// every request (stat, rename, fsync, an upload's writes), but it is far
// too long for a target that holds up a dump: pushTimeout bounds that.
// Tests shorten it.
var sftpStallTimeout = 10 * time.Minute

// pushTimeout is how long the fan-out waits for a target to take the
// dump's next bytes (a full 1 MiB chunk onto its upload queue) before that
// target is failed and its connection closed. While one target holds up
// the fan-out, the dump is not read, and ClickHouse abandons an answer it
// cannot send for http_send_timeout: 1800 s on 18.16, but 30 s on
// current versions. That is a setting of the server's default profile,
// applied to the HTTP socket, which a query's own settings do not change
// (and a readonly user could not set), so it is not passed here. Past
// it, every target would lose the set, not just the stalled one. 15 s
// leaves half of the 30 s as margin, and still lets through a target that
// takes a megabyte in 15 s (about 70 KB/s): a slow link answers far
// faster. The wait is shared: targets take data concurrently, so the
// fan-out gives all of them the same deadline (fanout.Write). Tests
// shorten it.
var pushTimeout = 15 * time.Second

// newSFTP starts the SFTP subsystem on conn, its byte streams watched by
// dog. It is sftp.NewClient with the pipes wrapped.
func newSFTP(conn *ssh.Client, dog *watchdog) (*sftp.Client, error) {
	s, err := conn.NewSession()
	if err != nil {
		return nil, err
	}
	wr, err := s.StdinPipe()
	if err != nil {
		return nil, err
	}
	rd, err := s.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// Unread, a server's messages there would use up the channel's window.
	stderr, err := s.StderrPipe()
	if err != nil {
		return nil, err
	}
	go func() { _, _ = io.Copy(io.Discard, stderr) }()
	if err := s.RequestSubsystem("sftp"); err != nil {
		return nil, err
	}
	return sftp.NewClientPipe(watchedReader{rd, dog}, watchedWriter{wr, dog},
		sftp.UseConcurrentWrites(true),
		sftp.MaxConcurrentRequestsPerFile(64),
	)
}

// watchdog closes a connection on which SFTP requests have waited for
// limit with nothing at all coming back. Every request, an upload's writes
// as much as a stat, gets exactly one answer, so counting the packets
// each way tells whether any is waiting. SSH keepalives would not do: the
// server's sshd answers them while its SFTP process hangs on a dead disk.
// An idle connection is left alone: it fails, if dead, once used.
type watchdog struct {
	limit time.Duration
	kill  func()
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	out, in frames
	waiting int       // requests sent and not answered
	since   time.Time // the last answer, or the first request since
	err     error     // set once the watchdog has killed the connection
}

func newWatchdog(limit time.Duration, kill func()) *watchdog {
	w := &watchdog{limit: limit, kill: kill, done: make(chan struct{})}
	go w.run(max(limit/10, 10*time.Millisecond))
	return w
}

func (w *watchdog) run(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case now := <-t.C:
			if w.expired(now) {
				w.kill()
				return
			}
		}
	}
}

// expired reports whether requests have waited limit without an answer,
// and if so records the stall.
func (w *watchdog) expired(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting == 0 || now.Sub(w.since) < w.limit {
		return false
	}
	if w.err == nil {
		w.err = fmt.Errorf("stalled: requests waited %v without any answer; connection closed", w.limit)
	}
	return true
}

func (w *watchdog) stop() { w.once.Do(func() { close(w.done) }) }

// abort records err as the stall, unless one is recorded already, stops
// watching and closes the connection.
func (w *watchdog) abort(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.stop()
	w.kill()
}

// stalled returns the stall that made w close the connection, if any.
func (w *watchdog) stalled() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// sent counts the requests that begin in p, about to be written.
func (w *watchdog) sent(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.out.count(p)
	if n > 0 && w.waiting == 0 {
		w.since = time.Now()
	}
	w.waiting += n
}

// received notes that p came from the server: progress, and answers.
func (w *watchdog) received(p []byte) {
	if len(p) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.since = time.Now()
	w.waiting = max(w.waiting-w.in.count(p), 0)
}

type watchedReader struct {
	r   io.Reader
	dog *watchdog
}

func (x watchedReader) Read(p []byte) (int, error) {
	n, err := x.r.Read(p)
	x.dog.received(p[:n])
	return n, err
}

type watchedWriter struct {
	io.WriteCloser
	dog *watchdog
}

func (x watchedWriter) Write(p []byte) (int, error) {
	x.dog.sent(p)
	return x.WriteCloser.Write(p)
}

// frames follows the SFTP packets in one direction of a stream (a uint32
// length, then that many bytes), whatever the boundaries of the writes.
type frames struct {
	head  [4]byte
	nhead int
	left  uint32 // bytes of the current packet still to come
}

// count returns how many packets begin in p.
func (f *frames) count(p []byte) int {
	n := 0
	for len(p) > 0 {
		if f.left > 0 {
			k := uint32(min(uint64(len(p)), uint64(f.left)))
			f.left -= k
			p = p[k:]
			continue
		}
		k := copy(f.head[f.nhead:], p)
		f.nhead += k
		p = p[k:]
		if f.nhead == len(f.head) {
			f.left, f.nhead = binary.BigEndian.Uint32(f.head[:]), 0
			n++
		}
	}
	return n
}

func (r *remote) join(elem ...string) string {
	return path.Join(append([]string{r.target.Path}, elem...)...)
}

// rename moves from to to, replacing to atomically when the server has the
// posix-rename extension (OpenSSH does). Without it, to is removed first,
// so for a moment it does not exist: never a half-written file, but a
// reader may then find it missing.
func (r *remote) rename(from, to string) error {
	if r.posixRename {
		return r.c.PosixRename(from, to)
	}
	if err := r.c.Rename(from, to); err == nil {
		return nil
	}
	if err := r.c.Remove(to); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return r.c.Rename(from, to)
}

// writeFile writes data to name as put does.
func (r *remote) writeFile(name string, data []byte) error {
	_, err := r.put(name, bytes.NewReader(data))
	return err
}

// put streams src to a temporary name beside name, syncs it when the
// server can, and renames it over name: name is never half-written.
func (r *remote) put(name string, src io.Reader) (int64, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := path.Join(path.Dir(name), tmpPrefix+path.Base(name)+"-"+hex.EncodeToString(rnd[:]))
	f, err := r.c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return 0, err
	}
	n, err := f.ReadFrom(src)
	if err == nil && r.fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = r.rename(tmp, name)
	}
	if err != nil {
		_ = r.c.Remove(tmp)
	}
	return n, err
}

// readFile reads a small file, at most limit bytes.
func (r *remote) readFile(name string, limit int64) ([]byte, error) {
	f, err := r.c.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}

// tmpPrefix starts the names of files being written; a run removes those
// an interrupted run left.
const tmpPrefix = ".tmp-"

// uploader writes a stream to a remote file from a goroutine of its own,
// in large chunks that sftp splits into concurrent requests, so that the
// network overlaps compression and encryption.
type uploader struct {
	f     *sftp.File
	fsync bool
	stall func(error) // closes the target's connection
	buf   []byte
	queue chan []byte
	free  chan []byte
	done  chan struct{}
	n     int64

	mu  sync.Mutex
	err error
}

const uploadChunk = 1 << 20

// newUploader writes to f; stall, called when a chunk waits past its
// deadline (see write), must close f's connection, so that the write in
// progress fails and the uploader's goroutine ends.
func newUploader(f *sftp.File, fsync bool, stall func(error)) *uploader {
	u := &uploader{f: f, fsync: fsync, stall: stall, queue: make(chan []byte, 2), free: make(chan []byte, 3), done: make(chan struct{})}
	for range 3 {
		u.free <- make([]byte, 0, uploadChunk)
	}
	u.buf = <-u.free
	go u.run()
	return u
}

func (u *uploader) run() {
	defer close(u.done)
	for b := range u.queue {
		if u.failed() == nil {
			if _, err := u.f.Write(b); err != nil {
				u.setErr(err)
			}
		}
		u.free <- b[:0]
	}
}

func (u *uploader) failed() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

func (u *uploader) setErr(err error) {
	u.mu.Lock()
	if u.err == nil {
		u.err = err
	}
	u.mu.Unlock()
}

// write buffers p, queueing each full chunk for the goroutine to send.
// A chunk waits for room (for the target to have taken the chunks before
// it) until deadline at most: then the uploader fails as stalled and
// closes the target's connection, and write returns that error. The
// fan-out, which does not read the dump meanwhile, must not wait for a
// stalled target until ClickHouse abandons the dump (pushTimeout).
func (u *uploader) write(p []byte, deadline time.Time) (int, error) {
	written := 0
	for len(p) > 0 {
		if err := u.failed(); err != nil {
			return written, err
		}
		n := copy(u.buf[len(u.buf):cap(u.buf)], p)
		u.buf = u.buf[:len(u.buf)+n]
		p = p[n:]
		written += n
		if len(u.buf) == cap(u.buf) {
			if err := u.push(deadline); err != nil {
				return written, err
			}
		}
	}
	u.n += int64(written)
	return written, nil
}

// push queues the full buffer and takes a free one, waiting until
// deadline at most.
func (u *uploader) push(deadline time.Time) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	expired := func() <-chan time.Time {
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
		}
		return timer.C
	}
	// A target that keeps up needs no timer.
	select {
	case u.queue <- u.buf:
	default:
		select {
		case u.queue <- u.buf:
		case <-expired():
			return u.stalled()
		}
	}
	u.buf = nil // queued: Close must not queue it again
	select {
	case u.buf = <-u.free:
	default:
		select {
		case u.buf = <-u.free:
		case <-expired():
			return u.stalled()
		}
	}
	return nil
}

// stalled fails u because its target did not take the next chunk in
// time, and closes the target's connection.
func (u *uploader) stalled() error {
	u.setErr(fmt.Errorf("stalled: the target did not take the dump's next %d MiB within %v, while the dump waited for it (pushTimeout); connection closed", uploadChunk>>20, pushTimeout))
	err := u.failed()
	if u.stall != nil {
		u.stall(err)
	}
	return err
}

// Close sends what is buffered, syncs the file when the server can, and
// closes it. It is safe to call once only.
func (u *uploader) Close() error {
	if len(u.buf) > 0 && u.failed() == nil {
		u.queue <- u.buf
	}
	close(u.queue)
	<-u.done
	err := u.failed()
	if err == nil && u.fsync {
		err = u.f.Sync()
	}
	if cerr := u.f.Close(); err == nil {
		err = cerr
	}
	return err
}
