package job

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/notify"
)

type fakeEnv map[string]string

func (e fakeEnv) lookup(k string) (string, bool) { v, ok := e[k]; return v, ok }

func run(t *testing.T, env fakeEnv, fn func(context.Context, *config.Loader, *Report) error) (Result, map[string]any, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	res := Execute(context.Background(), Spec{Name: "test-job", Timeout: time.Minute, Run: fn}, env.lookup, &out, &errOut)
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("result line %q: %v", out.String(), err)
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("want exactly one line on stdout, got %q", out.String())
	}
	return res, line, errOut.String()
}

func baseEnv(t *testing.T) fakeEnv {
	return fakeEnv{EnvLockDir: t.TempDir(), EnvMetricsDir: t.TempDir()}
}

func TestOutcomesMapToStatusAndExitCode(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		status string
		code   int
	}{
		{"nil error is ok", nil, StatusOK, ExitOK},
		{"wrapped ErrRed is red", fmt.Errorf("%w: restore of set x failed", ErrRed), StatusRed, ExitRed},
		{"any other error is error", errors.New("cannot reach the backup host"), StatusError, ExitError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, line, _ := run(t, baseEnv(t), func(_ context.Context, _ *config.Loader, r *Report) error {
				r.Set("rows", 42)
				r.Set("status", "forged") // reserved: ignored
				return c.err
			})
			if res.Status != c.status || res.ExitCode() != c.code {
				t.Fatalf("status %q code %d, want %q %d", res.Status, res.ExitCode(), c.status, c.code)
			}
			if line["job"] != "test-job" || line["status"] != c.status || line["rows"] != float64(42) {
				t.Fatalf("line %v", line)
			}
			if _, ok := line["duration_ms"]; !ok {
				t.Fatalf("no duration in %v", line)
			}
			if (c.err == nil) != (line["error"] == nil) {
				t.Fatalf("error member %v for err %v", line["error"], c.err)
			}
		})
	}
}

func TestSecondRunWhileFirstHoldsTheLockIsSkipped(t *testing.T) {
	env := baseEnv(t)
	inside := make(chan struct{})
	release := make(chan struct{})
	done := make(chan Result)
	go func() {
		res := Execute(context.Background(), Spec{Name: "test-job", Run: func(context.Context, *config.Loader, *Report) error {
			close(inside)
			<-release
			return nil
		}}, env.lookup, io.Discard, io.Discard)
		done <- res
	}()
	<-inside
	ran := false
	res, line, _ := run(t, env, func(context.Context, *config.Loader, *Report) error { ran = true; return nil })
	if ran || res.Status != StatusSkipped || res.ExitCode() != ExitRunning || line["status"] != StatusSkipped {
		t.Fatalf("overlapping run: ran=%v status=%q code=%d", ran, res.Status, res.ExitCode())
	}
	close(release)
	if first := <-done; first.Status != StatusOK {
		t.Fatalf("first run: %q", first.Status)
	}
	// The lock is free again once the first run ends.
	if res, _, _ := run(t, env, func(context.Context, *config.Loader, *Report) error { return nil }); res.Status != StatusOK {
		t.Fatalf("after release: %q", res.Status)
	}
}

func metricValue(t *testing.T, dir, metric string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "guardian_job_test_job.prom"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, metric+"{") {
			return l[strings.LastIndexByte(l, ' ')+1:]
		}
	}
	t.Fatalf("no %s in\n%s", metric, b)
	return ""
}

func TestMetricsKeepLastSuccessAcrossFailures(t *testing.T) {
	env := baseEnv(t)
	dir := env[EnvMetricsDir]
	run(t, env, func(context.Context, *config.Loader, *Report) error { return errors.New("first run fails") })
	if v := metricValue(t, dir, lastSuccessMetric); v != "0" {
		t.Fatalf("never succeeded: last success %s", v)
	}
	run(t, env, func(context.Context, *config.Loader, *Report) error { return nil })
	okAt := metricValue(t, dir, lastSuccessMetric)
	if okAt == "0" {
		t.Fatal("success not recorded")
	}
	run(t, env, func(context.Context, *config.Loader, *Report) error { return fmt.Errorf("%w: bad", ErrRed) })
	if v := metricValue(t, dir, lastSuccessMetric); v != okAt {
		t.Fatalf("a red run changed last success from %s to %s", okAt, v)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "guardian_job_test_job.prom"))
	if !strings.Contains(string(b), `guardian_job_status{job_name="test-job",status="red"} 1`) {
		t.Fatalf("status not red:\n%s", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestRunPastItsTimeLimitIsAnError(t *testing.T) {
	env := baseEnv(t)
	env[EnvTimeout] = "50ms"
	res, _, _ := run(t, env, func(ctx context.Context, _ *config.Loader, _ *Report) error {
		<-ctx.Done()
		return fmt.Errorf("upload: %w", ctx.Err())
	})
	if res.Status != StatusError || !strings.Contains(res.Err, "time limit") {
		t.Fatalf("status %q err %q", res.Status, res.Err)
	}
	// A run that fails well inside its limit does not blame the limit.
	res, _, _ = run(t, baseEnv(t), func(context.Context, *config.Loader, *Report) error { return errors.New("permission denied") })
	if res.Status != StatusError || strings.Contains(res.Err, "time limit") {
		t.Fatalf("a quick failure: status %q err %q", res.Status, res.Err)
	}
}

// A GUARDIAN_JOB_TIMEOUT of 0 or nonsense fails the run before it starts,
// naming the setting, instead of being taken for a default.
func TestABadJobTimeoutFailsTheRun(t *testing.T) {
	for _, v := range []string{"0", "0s", "-5m", "soon"} {
		env := baseEnv(t)
		env[EnvTimeout] = v
		ran := false
		res, _, _ := run(t, env, func(context.Context, *config.Loader, *Report) error { ran = true; return nil })
		if ran || res.Status != StatusError || !strings.Contains(res.Err, EnvTimeout) {
			t.Errorf("%s=%q: ran %v, %s %q", EnvTimeout, v, ran, res.Status, res.Err)
		}
	}
}

// A FixedTimeout job keeps its own bound whatever GUARDIAN_JOB_TIMEOUT says.
func TestFixedTimeoutIgnoresTheEnvironment(t *testing.T) {
	env := baseEnv(t)
	env[EnvTimeout] = "1ms"
	var out, errOut bytes.Buffer
	var left time.Duration
	res := Execute(context.Background(), Spec{Name: "test-job", Timeout: time.Hour, FixedTimeout: true,
		Run: func(ctx context.Context, _ *config.Loader, _ *Report) error {
			deadline, _ := ctx.Deadline()
			left = time.Until(deadline)
			return ctx.Err()
		}}, env.lookup, &out, &errOut)
	if res.Status != StatusOK || left < 59*time.Minute {
		t.Fatalf("status %q err %q, %v left of the run's time; want ok and about 1 h", res.Status, res.Err, left)
	}
}

// alertEnv is baseEnv with the alert webhook pointed at a local receiver;
// alerts returns the bodies received so far.
func alertEnv(t *testing.T) (env fakeEnv, alerts func() []map[string]any) {
	var mu sync.Mutex
	var got []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		got = append(got, body)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	env = baseEnv(t)
	env[EnvAlertWebhooks] = srv.URL + "/hook"
	env["GUARDIAN_WEBHOOK_ALLOW"] = "127.0.0.1"
	return env, func() []map[string]any { mu.Lock(); defer mu.Unlock(); return slices.Clone(got) }
}

// A red run sends exactly one alert; an ok run sends none.
func TestAlertOnceForRedNoneForOK(t *testing.T) {
	env, alerts := alertEnv(t)
	run(t, env, func(context.Context, *config.Loader, *Report) error { return nil })
	_, _, stderr := run(t, env, func(context.Context, *config.Loader, *Report) error {
		return fmt.Errorf("%w: restore of set 20261101T030000Z: row count 9, manifest 10", ErrRed)
	})
	if strings.Contains(stderr, "alert:") {
		t.Fatalf("alert failed: %s", stderr)
	}
	got := alerts()
	if len(got) != 1 {
		t.Fatalf("want exactly one alert, got %d", len(got))
	}
	if got[0]["event"] != "job.red" {
		t.Fatalf("alert %v", got[0])
	}
	data, _ := got[0]["data"].(map[string]any)
	if data["job"] != "test-job" || !strings.Contains(fmt.Sprint(data["error"]), "row count 9") {
		t.Fatalf("alert data %v", data)
	}
}

// Two jobs with one Lock never overlap: the second is skipped while the
// first runs, and each keeps its own name in its result and metrics.
func TestJobsSharingALockDoNotOverlap(t *testing.T) {
	env := baseEnv(t)
	inside, release, done := make(chan struct{}), make(chan struct{}), make(chan Result)
	go func() {
		done <- Execute(context.Background(), Spec{Name: "test-job", Run: func(context.Context, *config.Loader, *Report) error {
			close(inside)
			<-release
			return nil
		}}, env.lookup, io.Discard, io.Discard)
	}()
	<-inside
	mode := Spec{Name: "test-job-mirror", Lock: "test-job", Run: func(context.Context, *config.Loader, *Report) error { return nil }}
	var out bytes.Buffer
	if res := Execute(context.Background(), mode, env.lookup, &out, io.Discard); res.Status != StatusSkipped || !strings.Contains(out.String(), `"job":"test-job-mirror"`) {
		t.Fatalf("run sharing a held lock: %s %s", res.Status, out.String())
	}
	close(release)
	<-done
	if res := Execute(context.Background(), mode, env.lookup, io.Discard, io.Discard); res.Status != StatusOK {
		t.Fatalf("after release: %s", res.Status)
	}
	if _, err := os.Stat(filepath.Join(env[EnvMetricsDir], "guardian_job_test_job_mirror.prom")); err != nil {
		t.Fatalf("the mode's own metrics file: %v", err)
	}
}

// A job with LockWait (the daily backup, whose lock its mirror shares)
// waits for a held lock instead of being skipped, and a run that waits in
// vain is an error that alerts and leaves its metrics: never a silent skip.
func TestLockWaitWaitsAndAlertsWhenItGivesUp(t *testing.T) {
	defer func(p time.Duration) { lockPoll = p }(lockPoll)
	lockPoll = 5 * time.Millisecond
	env, alerts := alertEnv(t)
	hold := func() (release func()) {
		inside, done, release2 := make(chan struct{}), make(chan struct{}), make(chan struct{})
		go func() {
			Execute(context.Background(), Spec{Name: "test-job-mirror", Lock: "test-job", Run: func(context.Context, *config.Loader, *Report) error {
				close(inside)
				<-release2
				return nil
			}}, env.lookup, io.Discard, io.Discard)
			close(done)
		}()
		<-inside
		return func() { close(release2); <-done }
	}
	ran := false
	backup := Spec{Name: "test-job", LockWait: 5 * time.Second, Run: func(context.Context, *config.Loader, *Report) error { ran = true; return nil }}

	release := hold()
	time.AfterFunc(50*time.Millisecond, release)
	if res := Execute(context.Background(), backup, env.lookup, io.Discard, io.Discard); res.Status != StatusOK || !ran {
		t.Fatalf("a lock released within the wait: %s (ran %v), want ok", res.Status, ran)
	}

	release = hold()
	defer release()
	ran = false
	backup.LockWait = 30 * time.Millisecond
	var out bytes.Buffer
	res := Execute(context.Background(), backup, env.lookup, &out, io.Discard)
	if res.Status != StatusError || res.ExitCode() != ExitError || ran || !strings.Contains(res.Err, "after waiting") {
		t.Fatalf("a lock held past the wait: %s %q (ran %v), want an error", res.Status, res.Err, ran)
	}
	if len(alerts()) != 1 {
		t.Fatalf("%d alerts for a lost run, want 1", len(alerts()))
	}
	if _, err := os.Stat(filepath.Join(env[EnvMetricsDir], "guardian_job_test_job.prom")); err != nil {
		t.Fatalf("no metrics for a lost run: %v", err)
	}

	// Stopped while waiting (systemd's SIGTERM): it gives up at once, and
	// the lost run is still an error.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	backup.LockWait = time.Hour
	start := time.Now()
	if res := Execute(ctx, backup, env.lookup, io.Discard, io.Discard); res.Status != StatusError || ran {
		t.Fatalf("stopped while waiting: %s (ran %v), want an error", res.Status, ran)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatal("a stopped run kept waiting for the lock")
	}
}

// A lock that cannot be taken for any reason but another run holding it
// (its directory missing and not creatable, or not writable) loses every
// run until someone fixes it: each is an error that alerts and leaves its
// metrics, never a silent exit.
func TestLockThatCannotBeTakenIsAnErrorThatAlerts(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, wait := range []time.Duration{0, time.Minute} {
		env, alerts := alertEnv(t)
		env[EnvLockDir] = filepath.Join(notDir, "locks") // under a file: MkdirAll fails, root or not
		ran := false
		var out bytes.Buffer
		res := Execute(context.Background(), Spec{Name: "test-job", LockWait: wait, Run: func(context.Context, *config.Loader, *Report) error {
			ran = true
			return nil
		}}, env.lookup, &out, io.Discard)
		if ran || res.Status != StatusError || res.ExitCode() != ExitError || !strings.Contains(res.Err, "lock dir") {
			t.Fatalf("LockWait %s: status %q err %q (ran %v), want an error naming the lock dir", wait, res.Status, res.Err, ran)
		}
		if !strings.Contains(out.String(), `"status":"error"`) {
			t.Errorf("LockWait %s: result line %q", wait, out.String())
		}
		if n := len(alerts()); n != 1 {
			t.Errorf("LockWait %s: %d alerts, want 1", wait, n)
		}
		if v := metricValue(t, env[EnvMetricsDir], "guardian_job_last_run_timestamp_seconds"); v == "0" {
			t.Errorf("LockWait %s: last run not recorded", wait)
		}
	}
}

// With RealertAfter, a lasting failure alerts once, not on every run; a
// success in between, or the interval passing, lets the next one alert.
func TestRealertAfterThrottlesALastingFailure(t *testing.T) {
	env, alerts := alertEnv(t)
	count := func() int { return len(alerts()) }
	execute := func(err error, every time.Duration) string {
		var errOut bytes.Buffer
		Execute(context.Background(), Spec{Name: "test-job", RealertAfter: every, Run: func(context.Context, *config.Loader, *Report) error { return err }},
			env.lookup, io.Discard, &errOut)
		return errOut.String()
	}
	down := fmt.Errorf("%w: backup host unreachable", ErrRed)

	execute(down, time.Hour)
	if count() != 1 || metricValue(t, env[EnvMetricsDir], lastAlertMetric) == "0" {
		t.Fatalf("first failure: %d alerts", count())
	}
	if stderr := execute(down, time.Hour); count() != 1 || !strings.Contains(stderr, "still failing") {
		t.Fatalf("second failure within the hour: %d alerts, %q", count(), stderr)
	}
	execute(errors.New("another kind of failure"), time.Hour)
	if count() != 1 {
		t.Fatalf("third failure within the hour: %d alerts", count())
	}
	execute(down, time.Nanosecond) // the interval has passed
	if count() != 2 {
		t.Fatalf("failure after the interval: %d alerts", count())
	}
	execute(nil, time.Hour)
	execute(down, time.Hour) // the first failure after a success
	if count() != 3 {
		t.Fatalf("failure after a success: %d alerts", count())
	}
	// Without RealertAfter, every failure alerts.
	execute(down, 0)
	if count() != 4 {
		t.Fatalf("without RealertAfter: %d alerts", count())
	}
	// An alert stamped in the future (the clock was ahead when it went
	// out, and was set right since) does not silence the next failure.
	path := filepath.Join(env[EnvMetricsDir], "guardian_job_test_job.prom")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	future := strconv.FormatInt(time.Now().Add(24*time.Hour).Unix(), 10)
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, lastAlertMetric+"{") {
			lines[i] = l[:strings.LastIndexByte(l, ' ')+1] + future
		}
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if metricValue(t, env[EnvMetricsDir], lastAlertMetric) != future {
		t.Fatal("the test could not stamp the last alert in the future")
	}
	execute(down, time.Hour)
	if count() != 5 {
		t.Fatalf("failure after an alert stamped in the future: %d alerts, want 5", count())
	}
}

// An alert that could not be delivered does not count: the next failing
// run alerts again, however recent the attempt.
func TestUndeliveredAlertIsRetriedByTheNextFailure(t *testing.T) {
	var mu sync.Mutex
	down, delivered := true, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		delivered++
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	env := baseEnv(t)
	env[EnvAlertWebhooks] = srv.URL + "/hook"
	env["GUARDIAN_WEBHOOK_ALLOW"] = "127.0.0.1"
	fail := Spec{Name: "test-job", RealertAfter: time.Hour, Run: func(context.Context, *config.Loader, *Report) error {
		return fmt.Errorf("%w: backup host unreachable", ErrRed)
	}}
	var errOut bytes.Buffer
	Execute(context.Background(), fail, env.lookup, io.Discard, &errOut)
	if !strings.Contains(errOut.String(), "alert:") || metricValue(t, env[EnvMetricsDir], lastAlertMetric) != "0" {
		t.Fatalf("undelivered alert: %q, last alert %s", errOut.String(), metricValue(t, env[EnvMetricsDir], lastAlertMetric))
	}
	mu.Lock()
	down = false
	mu.Unlock()
	Execute(context.Background(), fail, env.lookup, io.Discard, io.Discard)
	mu.Lock()
	defer mu.Unlock()
	if delivered != 1 {
		t.Fatalf("the next failure delivered %d alerts, want 1", delivered)
	}
}

func TestBadAlertSettingIsReportedNotFatal(t *testing.T) {
	env := baseEnv(t)
	env[EnvAlertWebhooks] = "ftp://example.com/x"
	res, _, stderr := run(t, env, func(context.Context, *config.Loader, *Report) error { return errors.New("boom") })
	if res.Status != StatusError || !strings.Contains(stderr, EnvAlertWebhooks) {
		t.Fatalf("status %q stderr %q", res.Status, stderr)
	}
}

// An alert e-mail address without a relay to send through is reported
// on every failing run, and the alert does not count as sent (so the
// next failing run tries again instead of waiting out RealertAfter).
func TestAlertRecipientsWithoutARelayAreReported(t *testing.T) {
	env := baseEnv(t)
	env[EnvAlertEmail] = "ops@example.com"
	delete(env, notify.EnvSMTPAddr)
	res, _, stderr := run(t, env, func(context.Context, *config.Loader, *Report) error { return errors.New("boom") })
	if res.Status != StatusError || !strings.Contains(stderr, notify.EnvSMTPAddr) || !strings.Contains(stderr, "no e-mail was sent") {
		t.Fatalf("status %q stderr %q", res.Status, stderr)
	}
}

// A job with nowhere to send its alert says so on every run, ok ones
// included, so the gap shows before the failure it would hide; a red run
// records no alert as sent.
func TestNoAlertDestinationIsSaidOnEveryRun(t *testing.T) {
	env := baseEnv(t)
	for _, err := range []error{nil, fmt.Errorf("%w: restore of set x failed", ErrRed)} {
		_, _, stderr := run(t, env, func(context.Context, *config.Loader, *Report) error { return err })
		if !strings.Contains(stderr, "no alert destination") {
			t.Errorf("run ending %v: stderr %q does not say that no alert can be sent", err, stderr)
		}
	}
	prom, err := os.ReadFile(metricsPath(env[EnvMetricsDir], "test-job"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(prom), lastAlertMetric+`{job_name="test-job"} 0`+"\n") {
		t.Errorf("an alert counts as sent with no destination:\n%s", prom)
	}
	// A list of nothing is no destination either.
	blank := baseEnv(t)
	blank[EnvAlertWebhooks], blank[EnvAlertEmail] = " , ", ","
	if _, _, stderr := run(t, blank, func(context.Context, *config.Loader, *Report) error { return nil }); !strings.Contains(stderr, "no alert destination") {
		t.Errorf("lists of nothing: stderr %q", stderr)
	}
	env2, alerts := alertEnv(t)
	if _, _, stderr := run(t, env2, func(context.Context, *config.Loader, *Report) error { return nil }); strings.Contains(stderr, "no alert destination") || len(alerts()) != 0 {
		t.Errorf("with a destination: stderr %q, %d alerts", stderr, len(alerts()))
	}
}

// Alert settings that would fail the alert are said on every run, ok ones
// included, naming the setting and never its value; good ones say nothing.
func TestBadAlertSettingsAreSaidOnEveryRun(t *testing.T) {
	good, _ := alertEnv(t)
	if _, _, stderr := run(t, good, func(context.Context, *config.Loader, *Report) error { return nil }); strings.Contains(stderr, "alert settings") {
		t.Errorf("good settings: stderr %q", stderr)
	}
	for name, set := range map[string]map[string]string{
		"a webhook that is not a URL":    {EnvAlertWebhooks: "not a url with token s3cret"},
		"a recipient that is no address": {EnvAlertEmail: "ops at example", notify.EnvSMTPAddr: "127.0.0.1:25", notify.EnvSMTPFrom: "guardian@example.com"},
		"recipients without a relay":     {EnvAlertEmail: "ops@example.com"},
		"a relay without a sender":       {EnvAlertEmail: "ops@example.com", notify.EnvSMTPAddr: "127.0.0.1:25"},
	} {
		env := baseEnv(t)
		for k, v := range set {
			env[k] = v
		}
		_, _, stderr := run(t, env, func(context.Context, *config.Loader, *Report) error { return nil })
		if !strings.Contains(stderr, "WARNING: alert settings") || strings.Contains(stderr, "s3cret") {
			t.Errorf("%s: stderr %q", name, stderr)
		}
	}
}

// A job that panics is a failed run like any other: its result line,
// metrics and error, the stack on stderr; the process is not ended by it.
func TestAPanicIsAnErrorWithItsMetrics(t *testing.T) {
	env := baseEnv(t)
	run(t, env, func(context.Context, *config.Loader, *Report) error { return nil })
	res, line, errOut := run(t, env, func(context.Context, *config.Loader, *Report) error {
		var m map[string]int
		m["x"] = 1 // a nil map: the kind of fault a job might have
		return nil
	})
	if res.Status != StatusError || res.ExitCode() != ExitError || line["status"] != StatusError {
		t.Fatalf("status %q code %d, line %v", res.Status, res.ExitCode(), line)
	}
	// The error (which alerts carry) names the kind and the place, not
	// the value, which may print settings; the journal gets it all.
	if e, _ := line["error"].(string); !strings.Contains(e, "panicked (") || !strings.Contains(e, " at job_test.go:") || strings.Contains(e, "nil map") {
		t.Fatalf("error member %v", line["error"])
	}
	if !strings.Contains(errOut, "panic: assignment to entry in nil map") || !strings.Contains(errOut, "job_test.go") {
		t.Fatalf("no stack on stderr:\n%s", errOut)
	}
	b, _ := os.ReadFile(filepath.Join(env[EnvMetricsDir], "guardian_job_test_job.prom"))
	if !strings.Contains(string(b), `guardian_job_status{job_name="test-job",status="error"} 1`) {
		t.Fatalf("status not error:\n%s", b)
	}
}
