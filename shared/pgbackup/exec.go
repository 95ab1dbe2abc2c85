package pgbackup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// WaitDelay is how long a command may take to exit after its context
// ends and it was sent SIGTERM, before it is killed.
const WaitDelay = 15 * time.Second

// Bounds on commands that should be quick whatever the cluster's size.
const (
	shortTimeout = 2 * time.Minute
	checkTimeout = 5 * time.Minute
)

// osUser is the user commands run as when Guardian runs as root. A nil
// *osUser means "as ourselves, and chown nothing".
type osUser struct {
	name     string
	uid, gid uint32
	groups   []uint32
	home     string
}

func lookupOwner(name string) (*osUser, error) {
	if os.Geteuid() != 0 || name == "root" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("pgbackup: run user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgbackup: run user %q has no numeric uid/gid", name)
	}
	o := &osUser{name: name, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				o.groups = append(o.groups, uint32(g))
			}
		}
	}
	return o, nil
}

func (o *osUser) chown(path string) error {
	if o == nil {
		return nil
	}
	if err := os.Lchown(path, int(o.uid), int(o.gid)); err != nil {
		return fmt.Errorf("pgbackup: chown %s to %s: %w", path, o.name, err)
	}
	return nil
}

// runner starts pgbackrest and pg_ctl with a minimal environment that
// carries the cipher passphrases, as the run user when we are root, and
// in a process group of their own so that a cancelled context stops them
// and their workers.
type runner struct {
	cfg     Config
	user    *osUser
	env     []string
	secrets []string
}

func newRunner(cfg Config) (*runner, error) {
	if err := WriteConfig(cfg); err != nil {
		return nil, err
	}
	if st, err := os.Stat(cfg.Binary); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("pgbackup: pgbackrest not found at %s (install the pgbackrest package or set %s)", cfg.Binary, EnvBinary)
	}
	u, err := lookupOwner(cfg.User)
	if err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, user: u}
	home, name := "/", ""
	if u != nil {
		home, name = u.home, u.name
	} else if cur, err := user.Current(); err == nil {
		home, name = cur.HomeDir, cur.Username
	}
	r.env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home,
		"USER=" + name,
		"LOGNAME=" + name,
	}
	for _, repo := range cfg.Repos {
		r.env = append(r.env, fmt.Sprintf("PGBACKREST_REPO%d_CIPHER_PASS=%s", repo.Index, repo.CipherPass))
		r.secrets = append(r.secrets, repo.CipherPass)
	}
	return r, nil
}

// cmdError is a command that ran and failed (non-zero exit). Errors that
// are not cmdError (a missing binary, a timeout) are environment problems.
type cmdError struct {
	desc   string
	code   int
	output string
}

func (e *cmdError) Error() string {
	if e.output == "" {
		return fmt.Sprintf("%s: exit status %d", e.desc, e.code)
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.desc, e.code, e.output)
}

func isCmdError(err error) bool {
	var ce *cmdError
	return errors.As(err, &ce)
}

// run runs name with args and returns its standard output. timeout, when
// positive, bounds the command within ctx.
func (r *runner) run(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	desc := describe(name, args)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = "/"
	cmd.Env = r.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if r.user != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: r.user.uid, Gid: r.user.gid, Groups: r.user.groups}
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = WaitDelay
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.String(), nil
	}
	if cmd.Process != nil && ctx.Err() != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // workers left behind
	}
	out := stderr.String()
	if strings.TrimSpace(out) == "" {
		out = stdout.String()
	}
	// Redacted before it is cut: a secret across the cut would survive
	// in part.
	out = tail(r.redact(out), 20, 2000)
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("pgbackup: %s: stopped: %w", desc, ctx.Err())
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return stdout.String(), &cmdError{desc: "pgbackup: " + desc, code: ee.ExitCode(), output: out}
	default:
		err = fmt.Errorf("pgbackup: %s: %w", desc, err)
	}
	if out != "" {
		err = fmt.Errorf("%w: %s", err, out)
	}
	return stdout.String(), err
}

// pgbackrest runs a pgbackrest command for the configured stanza.
func (r *runner) pgbackrest(ctx context.Context, timeout time.Duration, command string, opts ...string) (string, error) {
	args := append([]string{"--config=" + r.cfg.ConfigPath, "--stanza=" + r.cfg.Stanza}, opts...)
	return r.run(ctx, timeout, r.cfg.Binary, append(args, command)...)
}

func (r *runner) redact(s string) string {
	for _, secret := range r.secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return s
}

// describe names a command for errors: its base name and arguments, minus
// what every call repeats (pgbackrest's config and stanza, pg_ctl's
// server options).
func describe(name string, args []string) string {
	parts := []string{filepath.Base(name)}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case strings.HasPrefix(a, "--config="), strings.HasPrefix(a, "--stanza="):
			continue
		case a == "-o" && i+1 < len(args):
			parts = append(parts, "-o ...")
			i++
			continue
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// tail keeps the last lines (at most maxLines and maxBytes) of s, on one line.
func tail(s string, maxLines, maxBytes int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	out := strings.Join(lines, " | ")
	if len(out) > maxBytes {
		out = "..." + out[len(out)-maxBytes:]
	}
	return out
}
