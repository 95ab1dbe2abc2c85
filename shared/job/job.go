// Package job runs a scheduled job function (backup, restore check,
// retention sweep, purge) the same way every time, so that cron, systemd
// and monitoring can treat all jobs alike:
//
//   - one run at a time: an exclusive flock on <lock dir>/<job>.lock; a
//     second run while the first holds it exits at once with status 75
//     (EX_TEMPFAIL, "try again later") instead of overlapping, unless its
//     Spec.LockWait lets it wait (a run that must not be lost); one that
//     waits in vain, or cannot take the lock at all (its directory missing
//     or not writable), is an error, and alerts;
//   - one JSON line on stdout at the end, {"job","status","started",
//     "duration_ms",..., "error"}, with status "ok", "red" (the job ran and
//     found something wrong, e.g. a backup that does not restore) or
//     "error" (it could not do its work); exit status 0, 1 or 2;
//   - Prometheus metrics in the node_exporter textfile format, written
//     atomically to <metrics dir>/guardian_job_<job>.prom: last run, last
//     success (carried over from the previous file when this run fails,
//     so "no success for N hours" alerts work), last alert, status and
//     duration;
//   - on "red" or "error", one notification (webhook and/or e-mail, see
//     shared/notify), waited for with a bound before the process exits;
//     a job that runs often sets Spec.RealertAfter so that a lasting
//     failure does not alert on every run.
//
// Environment:
//
//	GUARDIAN_JOB_LOCK_DIR      where lock files live (default /run/lock/guardian, else the temp dir)
//	GUARDIAN_JOB_METRICS_DIR   textfile-collector dir; unset: no metrics file
//	GUARDIAN_JOB_TIMEOUT       bound on one run (default per job, see Spec.Timeout)
//	GUARDIAN_JOB_ALERT_WEBHOOKS comma-separated URLs told of red or failed runs
//	GUARDIAN_JOB_ALERT_EMAIL   comma-separated addresses told of red or failed runs
//	plus shared/notify's SMTP and webhook settings.
package job

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/glassmkr/guardian/shared/atomicfile"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/nodump"
	"github.com/glassmkr/guardian/shared/notify"
	"github.com/glassmkr/guardian/shared/version"
)

// Environment variables read by Main.
const (
	EnvLockDir       = "GUARDIAN_JOB_LOCK_DIR"
	EnvMetricsDir    = "GUARDIAN_JOB_METRICS_DIR"
	EnvTimeout       = "GUARDIAN_JOB_TIMEOUT"
	EnvAlertWebhooks = "GUARDIAN_JOB_ALERT_WEBHOOKS"
	EnvAlertEmail    = "GUARDIAN_JOB_ALERT_EMAIL"
)

// Exit statuses.
const (
	ExitOK      = 0
	ExitRed     = 1
	ExitError   = 2
	ExitRunning = 75 // EX_TEMPFAIL: another run holds the lock
)

// Statuses in the result line and the metrics.
const (
	StatusOK      = "ok"
	StatusRed     = "red"
	StatusError   = "error"
	StatusSkipped = "skipped"
)

// ErrRed marks a run that did its work and found a problem (a check
// failed). Wrap it: fmt.Errorf("%w: restore of %s: ...", job.ErrRed, set).
var ErrRed = errors.New("check failed")

// Spec describes a job.
type Spec struct {
	// Name is the job's name: lower-case letters, digits and dashes.
	Name string
	// Timeout bounds a run unless GUARDIAN_JOB_TIMEOUT says otherwise.
	Timeout time.Duration
	// FixedTimeout ignores GUARDIAN_JOB_TIMEOUT: for a mode that shares
	// its settings file with a job whose runs may take far longer (a
	// mirror every 15 minutes must not inherit a backup's hours, holding
	// the lock the backup needs).
	FixedTimeout bool
	// Run does the work, adding facts for the result line to r. A nil
	// error is "ok"; an error wrapping ErrRed is "red"; any other is
	// "error". Errors must not contain secrets: they are printed and sent.
	Run func(ctx context.Context, env *config.Loader, r *Report) error
	// Lock names the lock file when it is not Name: jobs that must not
	// overlap (a mode of another job) share one. Metrics, alerts and the
	// result line keep Name.
	Lock string
	// LockWait is how long a run waits for a lock another run holds
	// before it gives up. Zero: it does not wait, and is skipped (exit
	// 75, no alert), which suits a job the timer starts again soon. A run
	// that must not be lost (the daily backup, whose lock its 15-minute
	// mirror shares) waits, and one that gives up is an error and alerts.
	LockWait time.Duration
	// RealertAfter, for a job that runs often: while it keeps failing,
	// it alerts on the first failure after a success and then at most
	// once per RealertAfter (the time of the last alert is kept in the
	// metrics file; without a metrics directory every failure alerts).
	RealertAfter time.Duration
}

// Report collects the facts a run reports in its result line.
type Report struct {
	fields map[string]any
}

// Set records a fact (counts, set names, sizes) for the result line.
// Reserved names (job, status, started, duration_ms, error) are ignored.
func (r *Report) Set(key string, value any) {
	switch key {
	case "job", "status", "started", "duration_ms", "error":
		return
	}
	if r.fields == nil {
		r.fields = map[string]any{}
	}
	r.fields[key] = value
}

// Get returns a fact recorded with Set.
func (r *Report) Get(key string) any { return r.fields[key] }

// Result is one run's outcome, as printed.
type Result struct {
	Job      string
	Status   string
	Started  time.Time
	Duration time.Duration
	Err      string
	Fields   map[string]any
}

// MarshalJSON flattens the fields beside the fixed members.
func (res Result) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, len(res.Fields)+5)
	for k, v := range res.Fields {
		m[k] = v
	}
	m["job"] = res.Job
	m["status"] = res.Status
	m["started"] = res.Started.UTC().Format(time.RFC3339)
	m["duration_ms"] = res.Duration.Milliseconds()
	if res.Err != "" {
		m["error"] = res.Err
	}
	return json.Marshal(m)
}

// ExitCode is the process exit status for the result.
func (res Result) ExitCode() int {
	switch res.Status {
	case StatusOK:
		return ExitOK
	case StatusRed:
		return ExitRed
	case StatusSkipped:
		return ExitRunning
	default:
		return ExitError
	}
}

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Main runs the job with the process environment and exits.
func Main(spec Spec) {
	version.ExitIfAsked()
	// A job holds its own secrets (backup passphrases, the age identity):
	// no other process of its user may read them (shared/nodump).
	if err := nodump.Seal(); err != nil {
		fmt.Fprintln(os.Stderr, "job:", err)
		os.Exit(ExitError)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	res := Execute(ctx, spec, os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(res.ExitCode())
}

// Execute runs spec once under its lock, prints the result line to out,
// writes the metrics file, and sends the alert when the run was not ok.
// Diagnostics go to errOut.
func Execute(ctx context.Context, spec Spec, lookup func(string) (string, bool), out, errOut io.Writer) Result {
	if !validName.MatchString(spec.Name) {
		panic(fmt.Sprintf("job: invalid name %q", spec.Name))
	}
	res := Result{Job: spec.Name, Started: time.Now()}
	env := config.New(lookup)

	lockName := spec.Name
	if spec.Lock != "" {
		lockName = spec.Lock
	}
	if !validName.MatchString(lockName) {
		panic(fmt.Sprintf("job: invalid lock name %q", lockName))
	}
	lock, err := acquireWithin(ctx, lockDir(env), lockName, spec.LockWait)
	if errors.Is(err, errLocked) && spec.LockWait <= 0 {
		// The one harmless outcome: another run is doing the work.
		res.Status, res.Err = StatusSkipped, err.Error()
		printResult(out, errOut, res)
		return res
	}
	if err != nil {
		// Every other failure to lock (a lock directory missing or not
		// writable, a wait in vain) loses this run, and would go on losing
		// every run: it alerts and leaves its metrics like any failure.
		res.Status, res.Err = StatusError, err.Error()
		if errors.Is(err, errLocked) {
			res.Err = fmt.Sprintf("%s after waiting %s for it", err, spec.LockWait)
		}
		res.Duration = time.Since(res.Started)
		return finish(spec, env, res, out, errOut)
	}
	defer lock.Close()

	timeout := spec.Timeout
	if !spec.FixedTimeout {
		// A bad GUARDIAN_JOB_TIMEOUT fails the run here, whether or not
		// the job's own Run looks at the loader's errors: a 0 taken for
		// the default would cut a six-hour backup at the hour.
		t := config.New(lookup)
		timeout = t.PositiveDuration(EnvTimeout, spec.Timeout)
		if err := t.Err(); err != nil {
			res.Status, res.Err = StatusError, err.Error()
			res.Duration = time.Since(res.Started)
			return finish(spec, env, res, out, errOut)
		}
	}
	if timeout <= 0 {
		timeout = time.Hour
	}
	runCtx, cancel := context.WithTimeout(ctx, timeout)
	rep := &Report{}
	err = runRecovered(spec, runCtx, env, rep, errOut)
	cancel()
	res.Duration = time.Since(res.Started)
	res.Fields = rep.fields
	switch {
	case err == nil:
		res.Status = StatusOK
	case errors.Is(err, ErrRed):
		res.Status = StatusRed
		res.Err = err.Error()
	default:
		res.Status = StatusError
		// runCtx is cancelled by now whatever happened: only its deadline
		// passing means the time limit cut the run.
		if errors.Is(runCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("%w (after the %s time limit)", err, timeout)
		}
		res.Err = err.Error()
	}
	return finish(spec, env, res, out, errOut)
}

// runRecovered runs spec.Run, turning a panic into an error: a panic that
// ended the process would skip the result line, the alert and the
// metrics, which would go on showing the run before as the last. The
// panic's value and stack go to errOut (the journal), as Go prints them;
// the error, which alerts carry off the host, names only the value's type
// and where it was raised, since a value may print settings.
func runRecovered(spec Spec, ctx context.Context, env *config.Loader, rep *Report, errOut io.Writer) (err error) {
	defer func() {
		if v := recover(); v != nil {
			fmt.Fprintf(errOut, "%s: panic: %v\n\n%s\n", spec.Name, v, debug.Stack())
			err = fmt.Errorf("the job panicked (%T%s); its stack is in the job's log", v, panicSite())
		}
	}()
	return spec.Run(ctx, env, rep)
}

// panicSite is where the panic being recovered was raised (" at
// file:line", the first frame outside the runtime), or "".
func panicSite() string {
	pc := make([]uintptr, 32)
	frames := runtime.CallersFrames(pc[:runtime.Callers(3, pc)])
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "runtime.") && f.File != "" {
			return fmt.Sprintf(" at %s:%d", filepath.Base(f.File), f.Line)
		}
		if !more {
			return ""
		}
	}
}

// finish prints the result line, alerts when the run was not ok (once per
// RealertAfter for a lasting failure) and writes the metrics file.
func finish(spec Spec, env *config.Loader, res Result, out, errOut io.Writer) Result {
	printResult(out, errOut, res)
	dir := env.Optional(EnvMetricsDir, "")
	var prev previousRun
	if dir != "" {
		prev = readPrevious(metricsPath(dir, res.Job))
	}
	alerting := res.Status != StatusOK
	// An alert stamped in the future (the clock was ahead then) does not
	// silence the next ones.
	if since := time.Since(prev.lastAlert); alerting && spec.RealertAfter > 0 && dir != "" && prev.failed() && since >= 0 && since < spec.RealertAfter {
		alerting = false
		fmt.Fprintf(errOut, "%s: still failing; alerted at %s, next alert after %s\n", spec.Name,
			prev.lastAlert.UTC().Format(time.RFC3339), prev.lastAlert.Add(spec.RealertAfter).UTC().Format(time.RFC3339))
	}
	lastAlert := prev.lastAlert
	if !hasAlertDestination(env) {
		// Said on every run, not only a failing one, so that the gap is
		// seen before the failure it would hide (a red restore check the
		// posture promises to notify).
		fmt.Fprintf(errOut, "%s: WARNING: no alert destination (%s, %s): a failed run tells no one\n", spec.Name, EnvAlertWebhooks, EnvAlertEmail)
		alerting = false
	} else if err := alertSettingsProblem(env); err != nil {
		// The same for settings that would fail the alert when it is
		// needed: said on every run, not found out at the first failure.
		fmt.Fprintf(errOut, "%s: WARNING: alert settings: %v: a failed run's alert would not reach everyone\n", spec.Name, err)
	}
	if alerting {
		// Only an alert that went out counts: one that failed is tried
		// again by the next failing run.
		if err := alert(env, res); err != nil {
			fmt.Fprintf(errOut, "%s: alert: %v\n", spec.Name, err)
		} else {
			lastAlert = time.Now()
		}
	}
	if dir != "" {
		if err := writeMetrics(dir, res, prev.lastSuccess, lastAlert); err != nil {
			fmt.Fprintf(errOut, "%s: metrics: %v\n", spec.Name, err)
		}
	}
	return res
}

func printResult(out, errOut io.Writer, res Result) {
	line, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(errOut, "%s: result: %v\n", res.Job, err)
		return
	}
	fmt.Fprintf(out, "%s\n", line)
	if res.Err != "" {
		fmt.Fprintf(errOut, "%s: %s: %s\n", res.Job, strings.ToUpper(res.Status), res.Err)
	}
}

func lockDir(env *config.Loader) string {
	if d := env.Optional(EnvLockDir, ""); d != "" {
		return d
	}
	if st, err := os.Stat("/run/lock"); err == nil && st.IsDir() && syscall.Access("/run/lock", 2) == nil {
		return "/run/lock/guardian"
	}
	return filepath.Join(os.TempDir(), "guardian-jobs")
}

var errLocked = errors.New("another run of this job holds its lock")

// ErrLocked is TryLock's answer while another run holds the job's lock.
var ErrLocked = errLocked

// TryLock takes spec's lock (where Execute takes it, by lookup's
// settings) without waiting, for work done outside a run that must not
// overlap one, such as a clean-up after it. It returns ErrLocked while a
// run holds it; release gives it back.
func TryLock(spec Spec, lookup func(string) (string, bool)) (release func(), err error) {
	name := spec.Name
	if spec.Lock != "" {
		name = spec.Lock
	}
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("job: invalid lock name %q", name)
	}
	f, err := acquire(lockDir(config.New(lookup)), name)
	if err != nil {
		return nil, err
	}
	return func() { _ = f.Close() }, nil
}

// acquireWithin takes the job's lock, trying again every lockPoll for up
// to wait while another run holds it.
func acquireWithin(ctx context.Context, dir, name string, wait time.Duration) (*os.File, error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := acquire(dir, name)
		if !errors.Is(err, errLocked) || !time.Now().Before(deadline) {
			return f, err
		}
		t := time.NewTimer(min(lockPoll, time.Until(deadline)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
	}
}

// lockPoll is how often a waiting run tries the lock again.
var lockPoll = time.Second

// acquire takes the job's lock without waiting. The lock is released
// when the file is closed or the process dies, so a crashed run never
// leaves a stale lock behind.
func acquire(dir, name string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("lock dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name+".lock"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

const (
	lastSuccessMetric = "guardian_job_last_success_timestamp_seconds"
	lastAlertMetric   = "guardian_job_last_alert_timestamp_seconds"
)

func metricsPath(dir, job string) string {
	return filepath.Join(dir, "guardian_job_"+strings.ReplaceAll(job, "-", "_")+".prom")
}

// writeMetrics replaces the job's textfile-collector file atomically.
// lastSuccess (Unix seconds) is the previous file's, replaced when this
// run succeeded; lastAlert is when an alert was last sent (zero: never).
func writeMetrics(dir string, res Result, lastSuccess float64, lastAlert time.Time) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := metricsPath(dir, res.Job)
	end := res.Started.Add(res.Duration)
	if res.Status == StatusOK {
		lastSuccess = float64(end.UnixMilli()) / 1000
	}
	alertAt := 0.0
	if !lastAlert.IsZero() {
		alertAt = float64(lastAlert.UnixMilli()) / 1000
	}
	var b strings.Builder
	label := fmt.Sprintf(`{job_name=%q}`, res.Job)
	fmt.Fprintf(&b, "# HELP guardian_job_last_run_timestamp_seconds When the job last finished.\n# TYPE guardian_job_last_run_timestamp_seconds gauge\n")
	fmt.Fprintf(&b, "guardian_job_last_run_timestamp_seconds%s %s\n", label, ftoa(float64(end.UnixMilli())/1000))
	fmt.Fprintf(&b, "# HELP %s When the job last finished with status ok (0: never).\n# TYPE %s gauge\n", lastSuccessMetric, lastSuccessMetric)
	fmt.Fprintf(&b, "%s%s %s\n", lastSuccessMetric, label, ftoa(lastSuccess))
	fmt.Fprintf(&b, "# HELP %s When the job last sent an alert (0: never).\n# TYPE %s gauge\n", lastAlertMetric, lastAlertMetric)
	fmt.Fprintf(&b, "%s%s %s\n", lastAlertMetric, label, ftoa(alertAt))
	fmt.Fprintf(&b, "# HELP guardian_job_duration_seconds How long the last run took.\n# TYPE guardian_job_duration_seconds gauge\n")
	fmt.Fprintf(&b, "guardian_job_duration_seconds%s %s\n", label, ftoa(res.Duration.Seconds()))
	fmt.Fprintf(&b, "# HELP guardian_job_status 1 for the last run's status.\n# TYPE guardian_job_status gauge\n")
	for _, s := range []string{StatusOK, StatusRed, StatusError} {
		v := 0
		if s == res.Status {
			v = 1
		}
		fmt.Fprintf(&b, "guardian_job_status{job_name=%q,status=%q} %d\n", res.Job, s, v)
	}
	// node_exporter's textfile collector reads the directory at any time:
	// it must see the previous run's file or this one's, whole.
	return atomicfile.Write(path, []byte(b.String()), 0o644, nil)
}

// previousRun is what the last run's metrics file says.
type previousRun struct {
	lastSuccess float64 // Unix seconds, 0: never
	lastAlert   time.Time
	status      string
}

// failed reports whether the previous run was red or an error.
func (p previousRun) failed() bool { return p.status == StatusRed || p.status == StatusError }

func readPrevious(path string) previousRun {
	var p previousRun
	f, err := os.Open(path)
	if err != nil {
		return p
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, lastSuccessMetric+"{"):
			p.lastSuccess = v
		case strings.HasPrefix(line, lastAlertMetric+"{") && v > 0:
			p.lastAlert = time.UnixMilli(int64(v * 1000))
		case strings.HasPrefix(line, "guardian_job_status{") && v == 1:
			for _, s := range []string{StatusOK, StatusRed, StatusError} {
				if strings.Contains(line[:i], fmt.Sprintf("status=%q", s)) {
					p.status = s
				}
			}
		}
	}
	return p
}

func ftoa(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// AlertWait bounds how long a failed run waits for its alert's delivery.
var AlertWait = 30 * time.Second

// hasAlertDestination reports whether an alert has anywhere to go.
func hasAlertDestination(env *config.Loader) bool {
	return len(notify.SplitList(env.Optional(EnvAlertWebhooks, ""))) > 0 || len(notify.SplitList(env.Optional(EnvAlertEmail, ""))) > 0
}

// alertSettingsProblem reports what in the alert settings would keep an
// alert from its destinations: a malformed webhook URL or recipient, or
// recipients without a usable mail relay. It names settings, never values.
func alertSettingsProblem(env *config.Loader) error {
	if _, err := notify.WebhookURLs(EnvAlertWebhooks, env.Optional(EnvAlertWebhooks, "")); err != nil {
		return err
	}
	to := notify.SplitList(env.Optional(EnvAlertEmail, ""))
	for i, addr := range to {
		if _, err := mail.ParseAddress(addr); err != nil {
			return fmt.Errorf("%s: item %d is not an e-mail address", EnvAlertEmail, i+1)
		}
	}
	if len(to) == 0 {
		return nil
	}
	cfg := notify.LoadConfig(env)
	if cfg.SMTP.Addr == "" {
		return fmt.Errorf("%s names recipients, but %s is not set", EnvAlertEmail, notify.EnvSMTPAddr)
	}
	_, err := notify.NewMailer(cfg.SMTP)
	return err
}

func alert(env *config.Loader, res Result) error {
	hooks, err := notify.WebhookURLs(EnvAlertWebhooks, env.Optional(EnvAlertWebhooks, ""))
	if err != nil {
		return err
	}
	to := notify.SplitList(env.Optional(EnvAlertEmail, ""))
	if len(hooks) == 0 && len(to) == 0 {
		return nil
	}
	cfg := notify.LoadConfig(env)
	cfg.Workers = 1
	n, err := notify.New(cfg)
	if err != nil {
		return err
	}
	// Recipients with no relay to reach them: the alert must not count as
	// sent (it is tried again by the next failing run), and the run says
	// why. Webhooks, if any, still get it now.
	var mailLost error
	if !n.MailEnabled() && len(to) > 0 {
		mailLost = fmt.Errorf("%s names %d recipient(s), but %s is not set: no e-mail was sent", EnvAlertEmail, len(to), notify.EnvSMTPAddr)
		to = nil
		if len(hooks) == 0 {
			return mailLost
		}
	}
	subject := fmt.Sprintf("Guardian job %s: %s", res.Job, strings.ToUpper(res.Status))
	n.Send(notify.Notice{
		Event:    "job." + res.Status,
		Subject:  subject,
		Text:     fmt.Sprintf("%s\n\nStarted %s, took %s.\n%s\n", subject, res.Started.UTC().Format(time.RFC3339), res.Duration.Round(time.Millisecond), res.Err),
		To:       to,
		Data:     res,
		Webhooks: hooks,
	})
	ctx, cancel := context.WithTimeout(context.Background(), AlertWait)
	defer cancel()
	n.Close(ctx)
	if st := n.Stats(); st.Failed > 0 || st.Dropped > 0 {
		return errors.Join(fmt.Errorf("%d of the alert's deliveries failed", st.Failed+st.Dropped), mailLost)
	}
	return mailLost
}
