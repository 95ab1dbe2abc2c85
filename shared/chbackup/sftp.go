package chbackup

import (
	"bytes"
	"context"
	"crypto/rand"
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
	posixRename bool
	fsync       bool
	stopClose   func() bool
}

// dial connects to t. The server's host key must be one known_hosts pins
// for t's address: an unknown key is refused like a changed one (no trust
// on first use). Cancelling ctx closes the connection, which ends any
// transfer in progress.
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
	_ = nc.SetDeadline(time.Time{})
	conn := ssh.NewClient(sc, chans, reqs)
	c, err := sftp.NewClient(conn,
		sftp.UseConcurrentWrites(true),
		sftp.MaxConcurrentRequestsPerFile(64),
	)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%s: sftp: %w", t, err)
	}
	r := &remote{target: t, conn: conn, c: c}
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

func (r *remote) Close() error {
	r.stopClose()
	err := r.c.Close()
	if cerr := r.conn.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
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
	buf   []byte
	queue chan []byte
	free  chan []byte
	done  chan struct{}
	n     int64

	mu  sync.Mutex
	err error
}

const uploadChunk = 1 << 20

func newUploader(f *sftp.File, fsync bool) *uploader {
	u := &uploader{f: f, fsync: fsync, queue: make(chan []byte, 2), free: make(chan []byte, 3), done: make(chan struct{})}
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

func (u *uploader) Write(p []byte) (int, error) {
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
			u.queue <- u.buf
			u.buf = <-u.free
		}
	}
	u.n += int64(written)
	return written, nil
}

// Close sends what is buffered, syncs the file when the server can, and
// closes it. It is safe to call once only.
func (u *uploader) Close() error {
	if len(u.buf) > 0 {
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
