// Package fnserve is the start-up every function binary shares: it takes
// the listening socket that Caddy's function runtime hands over, tells the
// runtime when the function is ready, serves until asked to stop and then
// drains in-flight requests.
//
// Protocol with the runtime (caddymodules/function): the runtime creates the
// unix socket itself (abstract, under an unguessable name) and passes the
// listener as the file descriptor named by GUARDIAN_FUNCTION_LISTEN_FD, a
// pipe as GUARDIAN_FUNCTION_READY_FD, and the function's settings (its
// secrets among them: never in its environment, which /proc shows) on a
// pipe named by GUARDIAN_FUNCTION_SETTINGS_FD, read once the process is
// sealed; the function writes one byte to the readiness pipe once it can
// serve. SIGTERM starts a graceful stop. Run by hand, a
// function instead listens on the path in GUARDIAN_FUNCTION_SOCKET.
package fnserve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/nodump"
	"github.com/glassmkr/guardian/shared/sandbox"
	"github.com/glassmkr/guardian/shared/version"
)

// Variables set by the function runtime.
const (
	EnvListenFD = "GUARDIAN_FUNCTION_LISTEN_FD"
	EnvReadyFD  = "GUARDIAN_FUNCTION_READY_FD"
	// EnvSettingsFD names a socket on which the function, once sealed,
	// writes SealedByte and then reads its settings (EncodeSettings) to
	// the end.
	EnvSettingsFD = "GUARDIAN_FUNCTION_SETTINGS_FD"
	EnvSocket     = "GUARDIAN_FUNCTION_SOCKET"
	EnvName       = "GUARDIAN_FUNCTION_NAME"
)

// SealedByte is what a function writes on the settings socket once it is
// sealed; the runtime sends the settings only then.
const SealedByte = 'S'

// DefaultPath is the PATH every function gets.
const DefaultPath = "PATH=/usr/local/bin:/usr/bin:/bin"

// Setup builds a function's handler from its configuration. It returns the
// handler and a close function for what it opened (may be nil).
type Setup func(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error)

// Main runs a function binary: seals the process (shared/nodump), puts it
// in a Landlock domain (shared/sandbox), logs as JSON to stderr (the
// runtime tags the lines with the function's name), builds the handler
// and serves. It exits the process with status 1 on a start-up error.
func Main(setup Setup) {
	version.ExitIfAsked()
	// Functions speak UTC, whatever the host's zone: the times their
	// pages show say so, and no date is computed in a zone with DST.
	time.Local = time.UTC
	log := newLogger()
	defer func() { _ = log.Sync() }()
	if err := confine(log); err != nil {
		exit(log, err)
	}
	// Only now, sealed and sandboxed, does the process take its secrets.
	if err := readSettings(); err != nil {
		exit(log, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, log, setup); err != nil {
		exit(log, err)
	}
}

// confine closes the process to the other functions and to Caddy's other
// children, which run as the same user: sealed, its secrets stay its own
// (shared/nodump); in a Landlock domain of its own, it cannot read a
// sibling not sealed yet, nor signal Caddy or a sibling, should a request
// compromise it (shared/sandbox). A kernel without Landlock does not stop
// the function; the log says what applied.
func confine(log *zap.Logger) error {
	if err := nodump.Seal(); err != nil {
		return err
	}
	p, err := sandbox.Enter()
	if err != nil {
		return err
	}
	logProtection(log, p)
	return nil
}

// logProtection says once, at start, which confinement the kernel gave
// the function; a warning names what the operator should do about it.
func logProtection(log *zap.Logger, p sandbox.Protection) {
	fields := []zap.Field{
		zap.Int("landlock_abi", p.ABI),
		zap.Bool("ptrace_scoped", p.Ptrace),
		zap.Bool("signals_scoped", p.Scopes),
	}
	switch {
	case p.Filtered:
		log.Warn("no Landlock: a system call filter refused it (systemd's SystemCallFilter= must allow landlock_create_ruleset, landlock_add_rule and landlock_restrict_self: deploy/systemd/guardian-caddy.service)", fields...)
	case !p.Ptrace:
		log.Warn("no Landlock: enable it in the kernel's LSM list, install functions 0711 and set kernel.yama.ptrace_scope=1 (docs/deployment.md)", fields...)
	case !p.Scopes:
		log.Warn("Landlock domain entered, without signal scoping: a compromised function could still signal Caddy or a sibling (docs/deployment.md)", fields...)
	default:
		log.Info("Landlock domain entered", fields...)
	}
}

// exit logs a start-up or serving error and ends the process.
func exit(log *zap.Logger, err error) {
	log.Error("function stopped", zap.Error(err))
	_ = log.Sync()
	os.Exit(1)
}

// maxSettings bounds the settings a function reads.
const maxSettings = 1 << 20

// EncodeSettings encodes NAME=value entries for the settings pipe: each
// followed by a NUL, which no environment value can hold.
func EncodeSettings(env []string) []byte {
	var b []byte
	for _, kv := range env {
		b = append(append(b, kv...), 0)
	}
	return b
}

// readSettings, called once the process is sealed, says so on the socket
// named by EnvSettingsFD (started by the runtime), reads the settings the
// runtime then sends and sets them in the environment. Settings never
// override the runtime's own variables. Without EnvSettingsFD (run by
// hand) the environment is as given.
func readSettings() error {
	f, err := inherited(EnvSettingsFD, "settings")
	if f == nil || err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write([]byte{SealedByte}); err != nil {
		return fmt.Errorf("settings: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSettings+1))
	if err != nil {
		return fmt.Errorf("settings: %w", err)
	}
	if len(b) > maxSettings {
		return fmt.Errorf("settings: over %d bytes", maxSettings)
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("settings: an entry without a name")
		}
		switch k {
		case EnvListenFD, EnvReadyFD, EnvSettingsFD, EnvName:
			continue
		}
		if err := os.Setenv(k, v); err != nil {
			return fmt.Errorf("settings: %s: %w", k, err)
		}
	}
	return os.Unsetenv(EnvSettingsFD)
}

func newLogger() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.OutputPaths = []string{"stderr"}
	cfg.ErrorOutputPaths = []string{"stderr"}
	cfg.Sampling = nil
	log, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return log
}

func run(ctx context.Context, log *zap.Logger, setup Setup) error {
	ln, err := Listener()
	if err != nil {
		return err
	}
	if os.Getenv(EnvListenFD) != "" {
		// Started by the runtime: only it may connect (see parentOnly),
		// and it makes no unix socket of its own (see forbidUnixSockets).
		ln = &parentOnly{Listener: ln, parent: os.Getppid(), log: log}
		if err := forbidUnixSockets(); err != nil {
			_ = ln.Close()
			return err
		}
	}
	handler, closeFn, err := setup(ctx, log, config.New(os.LookupEnv))
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("setup: %w", err)
	}
	if closeFn != nil {
		defer closeFn()
	}
	return Serve(ctx, ln, handler)
}

// Listener returns the socket to serve on: the inherited one when started
// by the runtime, else a new one at GUARDIAN_FUNCTION_SOCKET.
func Listener() (net.Listener, error) {
	f, err := inherited(EnvListenFD, "listener")
	if err != nil {
		return nil, err
	}
	if f != nil {
		ln, err := net.FileListener(f)
		_ = f.Close() // FileListener dups the descriptor
		if err != nil {
			return nil, fmt.Errorf("inherited listener: %w", err)
		}
		return ln, nil
	}
	if path := os.Getenv(EnvSocket); path != "" {
		_ = os.Remove(path)
		return net.Listen("unix", path)
	}
	return nil, fmt.Errorf("no socket: start the function through Caddy or set %s", EnvSocket)
}

// Serve signals readiness, serves h on ln until ctx ends, then stops
// accepting and waits for in-flight requests to finish. Plain-text error
// answers of h (a ServeMux's 404 and 405) go out as problem+json, and a
// path that is not canonical is 404 before h sees it (canonicalPaths).
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           handler(h),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if err := signalReady(); err != nil {
		_ = srv.Close()
		return err
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// handler is h as Serve serves it.
func handler(h http.Handler) http.Handler {
	t := &running{after: stuckAfter()}
	return t.probes(canonicalPaths(problemErrors(t.track(h))))
}

// inherited is the file descriptor the runtime named in variable env, or
// nil when env is unset (a function run by hand).
func inherited(env, name string) (*os.File, error) {
	s := os.Getenv(env)
	if s == "" {
		return nil, nil
	}
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s: not a file descriptor", env)
	}
	return os.NewFile(uintptr(fd), name), nil
}

func signalReady() error {
	f, err := inherited(EnvReadyFD, "ready")
	if f == nil || err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write([]byte{'R'}); err != nil {
		return fmt.Errorf("signal ready: %w", err)
	}
	return nil
}
