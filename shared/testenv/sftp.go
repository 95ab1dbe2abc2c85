package testenv

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is the OpenSSH server binary SFTPServer runs.
const SSHD = "/usr/sbin/sshd"

// SFTP is a private OpenSSH sshd on 127.0.0.1 that serves SFTP only
// (ForceCommand internal-sftp), with a fresh ed25519 host key and one
// client key. Clients log in as the current user (root when tests run as
// root): a private sshd can only switch to its own user or, as root, to
// any. Because it runs on this machine, a remote path is a local path.
type SFTP struct {
	// Addr is 127.0.0.1:port.
	Addr string
	Port int
	// User is the login name: the current user.
	User string
	// KeyPath is the client's private key (OpenSSH format, no passphrase).
	KeyPath string
	// KnownHosts is a known_hosts file that pins the server's host key.
	KnownHosts string
	// HostKey is the server's public host key.
	HostKey ssh.PublicKey
	// Root is an empty directory for the test's files on the server.
	Root string
	// Dir holds the configuration, keys and pid file.
	Dir string

	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
}

// SFTPServer starts an sshd for t and stops it when t ends. It skips t
// when OpenSSH's server is not installed (deploy/stack/deps.sh installs
// openssh-server).
func SFTPServer(t testing.TB) *SFTP {
	t.Helper()
	return sftpServer(t, true)
}

// SFTPServerPerKey is SFTPServer without the server-wide ForceCommand:
// each line of its authorized_keys (SetAuthorizedKeys) says with its own
// command= option what that key may run, as the backup host's do.
func SFTPServerPerKey(t testing.TB) *SFTP {
	t.Helper()
	return sftpServer(t, false)
}

func sftpServer(t testing.TB, forceCommand bool) *SFTP {
	t.Helper()
	if _, err := os.Stat(SSHD); err != nil {
		t.Skipf("testenv: %s is not installed (apt-get install openssh-server, or deploy/stack/deps.sh)", SSHD)
	}
	dir := t.TempDir()
	s, err := startSFTP(dir, FreePort(t), forceCommand)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("testenv: stop sshd: %v", err)
		}
	})
	return s
}

// StartSFTP starts an sshd on 127.0.0.1:port with its files in dir, for
// programs that are not tests (benchmarks). The caller must Stop it.
func StartSFTP(dir string, port int) (*SFTP, error) {
	return startSFTP(dir, port, true)
}

// SetAuthorizedKeys replaces the server's authorized_keys (read at each
// login) with lines.
func (s *SFTP) SetAuthorizedKeys(lines string) error {
	return os.WriteFile(filepath.Join(s.Dir, "authorized_keys"), []byte(lines), 0o600)
}

func startSFTP(dir string, port int, forceCommand bool) (*SFTP, error) {
	if _, err := os.Stat(SSHD); err != nil {
		return nil, fmt.Errorf("%s is not installed (apt-get install openssh-server)", SSHD)
	}
	u, err := user.Current()
	if err != nil {
		return nil, err
	}
	// sshd checks for its privilege separation directory even when it
	// does not use it.
	if os.Geteuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("sshd needs /run/sshd: %w", err)
		}
	}
	s := &SFTP{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port, User: u.Username,
		KeyPath: filepath.Join(dir, "client_ed25519"), KnownHosts: filepath.Join(dir, "known_hosts"),
		Root: filepath.Join(dir, "root"), Dir: dir,
	}
	if err := os.MkdirAll(s.Root, 0o700); err != nil {
		return nil, err
	}
	hostKey, err := writeKey(filepath.Join(dir, "host_ed25519"))
	if err != nil {
		return nil, err
	}
	clientKey, err := writeKey(s.KeyPath)
	if err != nil {
		return nil, err
	}
	s.HostKey = hostKey
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientKey), 0o600); err != nil {
		return nil, err
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, hostKey) + "\n"
	if err := os.WriteFile(s.KnownHosts, []byte(line), 0o600); err != nil {
		return nil, err
	}
	conf := strings.Join([]string{
		"ListenAddress 127.0.0.1",
		"HostKey " + filepath.Join(dir, "host_ed25519"),
		"PidFile " + filepath.Join(dir, "sshd.pid"),
		"AuthorizedKeysFile " + filepath.Join(dir, "authorized_keys"),
		"AllowUsers " + u.Username,
		"PermitRootLogin prohibit-password",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"StrictModes no",
		"UsePAM no",
		"AllowTcpForwarding no",
		"AllowAgentForwarding no",
		"X11Forwarding no",
		"PermitTTY no",
		"Subsystem sftp internal-sftp",
		"LogLevel INFO",
		"",
	}, "\n")
	if forceCommand {
		conf += "ForceCommand internal-sftp\n"
	}
	confPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}

	s.cmd = exec.Command(SSHD, "-D", "-e", "-f", confPath, "-p", strconv.Itoa(port))
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	s.log = &lockedBuffer{}
	s.done = make(chan struct{})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			s.log.WriteString(line + "\n")
			if strings.Contains(line, "Server listening on") {
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = s.cmd.Wait()
		close(s.done)
	}()
	select {
	case <-ready:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("sshd exited at start:\n%s", s.log.String())
	case <-time.After(10 * time.Second):
		_ = s.Stop()
		return nil, fmt.Errorf("sshd did not listen within 10s:\n%s", s.log.String())
	}
}

// Log returns what sshd has logged.
func (s *SFTP) Log() string { return s.log.String() }

// Target returns the server as user@host:port/path for path below Root.
func (s *SFTP) Target(sub string) string {
	return s.User + "@" + s.Addr + filepath.Join(s.Root, sub)
}

// Stop ends sshd and the sessions it serves.
func (s *SFTP) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	// Each session is a child of the listener in a session of its own.
	for _, c := range Children(s.cmd.Process.Pid) {
		_ = syscall.Kill(c, syscall.SIGTERM)
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
		return nil
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		return errors.New("sshd ignored SIGTERM for 5s")
	}
}

// writeKey writes a new ed25519 private key in OpenSSH format to path and
// returns its public key.
func writeKey(path string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "guardian-test")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) WriteString(s string) {
	l.mu.Lock()
	l.b.WriteString(s)
	l.mu.Unlock()
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
