// Package deploy_test checks the production deployment files in this
// directory against the code they deploy: every job has a systemd service,
// a timer and a crontab line; every unit runs a binary the tree builds,
// reads its settings from /etc/guardian and is sandboxed; the Cloudflare
// ranges Caddy trusts are the same everywhere and reach the config Caddy
// runs; the backup host's sshd rules and the WireGuard addresses agree;
// the app host's sysctl drop-in holds the ptrace restriction the functions
// rely on. No root is needed. Checks that need a tool (systemd-analyze, sshd,
// ssh-keygen, curl, nft) run where it is installed and are skipped, with
// the reason, where it is not.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/pkg/sftp"

	_ "github.com/glassmkr/guardian/caddymodules/audit"
	_ "github.com/glassmkr/guardian/caddymodules/auth"
	_ "github.com/glassmkr/guardian/caddymodules/function"
	_ "github.com/glassmkr/guardian/caddymodules/guardian"
	_ "github.com/glassmkr/guardian/caddymodules/headers"
	_ "github.com/glassmkr/guardian/caddymodules/problem"
	_ "github.com/glassmkr/guardian/caddymodules/ratelimit"
	"github.com/glassmkr/guardian/shared/chbackup"
	"github.com/glassmkr/guardian/shared/testenv"
)

// pendingJobs are scheduled here before their code is in functions/jobs/.
// Only these may have units whose binary does not exist yet; a job that
// lands is checked like any other whether or not it is still listed.
var pendingJobs = map[string]bool{
	"backup-postgres":   true,
	"backup-clickhouse": true,
	"restore-verify":    true,
	"retention-sweep":   true,
	"account-purge":     true,
}

// Schedules the security posture and ARCHITECTURE fix (UTC).
var fixedSchedules = map[string][]string{
	"backup-postgres":   {"Sun *-*-* 03:00:00 UTC", "Mon..Sat *-*-* 02:00:00 UTC"},
	"backup-clickhouse": {"*-*-* 04:00:00 UTC"},
	"restore-verify":    {"*-*-01 05:00:00 UTC"},
}

const (
	installDir = "/usr/lib/guardian/"
	etcDir     = "/etc/guardian/"
	systemdDir = "systemd"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// ---------------------------------------------------------------- helpers

func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r, "go.mod")); err != nil {
		t.Fatalf("repository root not found from %s", r)
	}
	return r
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unit is a parsed systemd unit file: section -> key -> values in order.
type unit struct {
	name     string
	path     string
	sections map[string]map[string][]string
}

func (u unit) all(section, key string) []string { return u.sections[section][key] }

func (u unit) get(section, key string) string {
	v := u.sections[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func (u unit) has(section, key string) bool { _, ok := u.sections[section][key]; return ok }

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	u := unit{name: filepath.Base(path), path: path, sections: map[string]map[string][]string{}}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(read(t, path)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u.sections[section] == nil {
				u.sections[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			u.sections[section][k] = append(u.sections[section][k], v)
		}
	}
	return u
}

func units(t *testing.T, glob string) []unit {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(root(t), "deploy", systemdDir, glob))
	if err != nil {
		t.Fatal(err)
	}
	var out []unit
	for _, p := range paths {
		out = append(out, parseUnit(t, p))
	}
	return out
}

// jobsInTree lists functions/jobs/<name> directories holding Go code.
func jobsInTree(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root(t), "functions", "jobs"))
	if err != nil {
		t.Fatal(err)
	}
	var jobs []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if gos, _ := filepath.Glob(filepath.Join(root(t), "functions", "jobs", e.Name(), "*.go")); len(gos) > 0 {
			jobs = append(jobs, e.Name())
		}
	}
	return jobs
}

// scheduledJobs is every job with units: those in the tree and the pending.
func scheduledJobs(t *testing.T) []string {
	t.Helper()
	set := map[string]bool{}
	for _, j := range jobsInTree(t) {
		set[j] = true
	}
	for j := range pendingJobs {
		set[j] = true
	}
	var out []string
	for j := range set {
		out = append(out, j)
	}
	sort.Strings(out)
	return out
}

// jobModes are units that run a job with an argument under a name of
// their own: unit base name -> the job (its binary, env file and lock).
// The crontab runs them as `guardian-cron-job <job> <mode>`.
var jobModes = map[string]string{
	"backup-postgres-mirror": "backup-postgres",
}

// unitBase returns "backup-postgres" for guardian-backup-postgres.service
// and guardian-backup-postgres@.service, "backup-postgres-mirror" for
// guardian-backup-postgres-mirror.timer; "" for the edge and the target.
func unitBase(name string) string {
	base := strings.TrimPrefix(name, "guardian-")
	base = strings.TrimSuffix(strings.TrimSuffix(base, ".service"), ".timer")
	base = strings.TrimSuffix(base, "@")
	if base == "caddy" || !strings.HasPrefix(name, "guardian-") {
		return ""
	}
	return base
}

// jobOfUnit returns the job a unit runs: its base name, or for a mode
// (jobModes) the job it is a mode of.
func jobOfUnit(name string) string {
	base := unitBase(name)
	if job, ok := jobModes[base]; ok {
		return job
	}
	return base
}

// binarySource maps an installed binary path to the package that builds
// it (`make build` and `make release` write every main package under
// functions/ to functions/<last path element>).
func binarySource(t *testing.T, installed string) (pkg string, known bool) {
	t.Helper()
	rel, ok := strings.CutPrefix(installed, installDir)
	if !ok {
		return "", false
	}
	switch {
	case rel == "caddy" || rel == "guardianctl":
		return filepath.Join("cmd", rel), true
	case rel == "guardian-cron-job":
		return filepath.Join("deploy", "cron", rel), true
	case strings.HasPrefix(rel, "functions/"):
		name := strings.TrimPrefix(rel, "functions/")
		for _, dir := range []string{filepath.Join("functions", name), filepath.Join("functions", "jobs", name)} {
			if st, err := os.Stat(filepath.Join(root(t), dir)); err == nil && st.IsDir() {
				return dir, true
			}
		}
		return filepath.Join("functions", "jobs", name), false
	}
	return "", false
}

// envFile parses a KEY=value file in the subset both systemd's
// EnvironmentFile= and sh read the same way.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	vars := map[string]string{}
	name := regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
	sc := bufio.NewScanner(strings.NewReader(read(t, path)))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !name.MatchString(k) {
			t.Errorf("%s:%d: not KEY=value: %q", path, n, line)
			continue
		}
		if strings.HasPrefix(v, `"`) {
			inner, ok := strings.CutSuffix(v[1:], `"`)
			if !ok || strings.ContainsAny(inner, "\"$`\\") {
				t.Errorf("%s:%d: %s: a quoted value must end the line and hold no quote, $, backquote or backslash", path, n, k)
			}
			v = inner
		} else if strings.ContainsAny(v, " \t\"'$`\\;&|<>()~") {
			t.Errorf("%s:%d: %s: an unquoted value must hold no space or shell metacharacter", path, n, k)
		}
		vars[k] = v
	}
	return vars
}

func onCalendarToCron(t *testing.T, cal string) string {
	t.Helper()
	// The forms used here: "[DOW ]*-*-DD|* HH|*:MM:00 UTC".
	m := regexp.MustCompile(`^(?:(\S+) )?\*-\*-(\*|\d\d) (\d\d|\*):(\d\d):00 UTC$`).FindStringSubmatch(cal)
	if m == nil {
		t.Fatalf("OnCalendar %q: not a form this test converts", cal)
	}
	days := map[string]string{"Sun": "0", "Mon": "1", "Tue": "2", "Wed": "3", "Thu": "4", "Fri": "5", "Sat": "6"}
	dow := "*"
	if m[1] != "" {
		a, b, isRange := strings.Cut(m[1], "..")
		dow = days[a]
		if isRange {
			dow += "-" + days[b]
		}
	}
	dom := m[2]
	if dom != "*" {
		dom = strings.TrimPrefix(dom, "0")
	}
	hour := m[3]
	if hour != "*" {
		h, _ := strconv.Atoi(hour)
		hour = strconv.Itoa(h)
	}
	minute, _ := strconv.Atoi(m[4])
	return fmt.Sprintf("%d %s %s * %s", minute, hour, dom, dow)
}

// ------------------------------------------------------------------ tests

func TestEveryJobHasServiceTimerAndCrontabLine(t *testing.T) {
	r := root(t)
	crontab := read(t, filepath.Join(r, "deploy", "cron", "guardian-jobs.crontab"))
	for _, job := range scheduledJobs(t) {
		for _, suffix := range []string{".service", ".timer"} {
			if _, err := os.Stat(filepath.Join(r, "deploy", systemdDir, "guardian-"+job+suffix)); err != nil {
				t.Errorf("job %s has no deploy/systemd/guardian-%s%s", job, job, suffix)
			}
		}
		if !regexp.MustCompile(`guardian-cron-job ` + regexp.QuoteMeta(job) + `(\s|$)`).MatchString(crontab) {
			t.Errorf("job %s is not in deploy/cron/guardian-jobs.crontab", job)
		}
		if _, err := os.Stat(filepath.Join(r, "deploy", systemdDir, "env", job+".env")); err != nil {
			t.Errorf("job %s has no example env file deploy/systemd/env/%s.env", job, job)
		}
	}
	// And no unit for a job that is neither in the tree nor pending.
	inTree := jobsInTree(t)
	for _, u := range units(t, "guardian-*.*") {
		if job := jobOfUnit(u.name); job != "" && !slices.Contains(inTree, job) && !pendingJobs[job] {
			t.Errorf("%s schedules %s, which is neither in functions/jobs nor pending", u.name, job)
		}
	}
}

func TestTimers(t *testing.T) {
	target := parseUnit(t, filepath.Join(root(t), "deploy", systemdDir, "guardian.target"))
	wants := target.all("Unit", "Wants")
	if !slices.Contains(wants, "guardian-caddy.service") {
		t.Error("guardian.target does not want guardian-caddy.service")
	}
	timers := units(t, "guardian-*.timer")
	if len(timers) == 0 {
		t.Fatal("no timers")
	}
	for _, u := range timers {
		cals := u.all("Timer", "OnCalendar")
		if len(cals) == 0 {
			t.Errorf("%s: no OnCalendar", u.name)
		}
		for _, c := range cals {
			if !strings.HasSuffix(c, " UTC") {
				t.Errorf("%s: OnCalendar=%s is not in UTC", u.name, c)
			}
		}
		if u.get("Timer", "Persistent") != "true" {
			t.Errorf("%s: Persistent=true missing (a run missed while down must run at boot)", u.name)
		}
		if d, err := time.ParseDuration(strings.ReplaceAll(u.get("Timer", "RandomizedDelaySec"), "min", "m")); err != nil || d <= 0 || d > 15*time.Minute {
			t.Errorf("%s: RandomizedDelaySec=%q: want a small delay (up to 15min)", u.name, u.get("Timer", "RandomizedDelaySec"))
		}
		svc := strings.TrimSuffix(u.name, ".timer") + ".service"
		if got := u.get("Timer", "Unit"); got != "" && got != svc {
			t.Errorf("%s: Unit=%s, want %s", u.name, got, svc)
		}
		if !slices.Contains(wants, u.name) {
			t.Errorf("guardian.target does not want %s", u.name)
		}
		if want, ok := fixedSchedules[unitBase(u.name)]; ok && !slices.Equal(cals, want) {
			t.Errorf("%s: OnCalendar %q, want %q (the security posture's schedule)", u.name, cals, want)
		}
	}
}

// withoutPrivilegedFilter are the units that cannot have
// SystemCallFilter=~@privileged, and why; every other unit has it.
var withoutPrivilegedFilter = map[string]string{
	"guardian-restore-verify.service": "pgBackRest 2.45's restore calls chown(file, -1, -1) on the recovery files it writes: EPERM under the filter fails the restore",
}

// backupHostTargets are the settings that name SFTP targets on the backup
// host, reached over WireGuard.
var backupHostTargets = []string{"GUARDIAN_BACKUP_SFTP_TARGETS", "GUARDIAN_PGBACKREST_SFTP_TARGETS"}

var requiredHardening = map[string]string{
	"NoNewPrivileges":         "yes",
	"ProtectSystem":           "strict",
	"ProtectHome":             "yes",
	"PrivateTmp":              "yes",
	"PrivateDevices":          "yes",
	"ProtectKernelTunables":   "yes",
	"ProtectKernelModules":    "yes",
	"ProtectControlGroups":    "yes",
	"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
	"RestrictNamespaces":      "yes",
	"RestrictSUIDSGID":        "yes",
	"LockPersonality":         "yes",
	"SystemCallArchitectures": "native",
	"CapabilityBoundingSet":   "",
	"AmbientCapabilities":     "",
}

func TestServices(t *testing.T) {
	r := root(t)
	services := units(t, "guardian-*.service")
	if len(services) < 2 {
		t.Fatal("too few services")
	}
	byName := map[string]unit{}
	for _, u := range services {
		byName[u.name] = u
	}
	for _, u := range services {
		t.Run(u.name, func(t *testing.T) {
			job := jobOfUnit(u.name)
			exec := strings.Fields(u.get("Service", "ExecStart"))
			if len(exec) == 0 {
				t.Fatal("no ExecStart")
			}
			pkg, exists := binarySource(t, exec[0])
			switch {
			case pkg == "":
				t.Errorf("ExecStart %s is not under %s", exec[0], installDir)
			case !exists && !pendingJobs[job]:
				t.Errorf("ExecStart %s: no %s in the tree", exec[0], pkg)
			case !exists:
				t.Logf("ExecStart %s: %s not in the tree yet (pending job)", exec[0], pkg)
			}
			if job != "" && exec[0] != installDir+"functions/"+job {
				t.Errorf("ExecStart %s, want %sfunctions/%s", exec[0], installDir, job)
			}
			if base := unitBase(u.name); jobModes[base] != "" && (len(exec) != 2 || job+"-"+exec[1] != base) {
				t.Errorf("ExecStart %q: a mode unit runs its job with the mode as the one argument", exec)
			}
			envFiles := u.all("Service", "EnvironmentFile")
			if len(envFiles) == 0 {
				t.Error("no EnvironmentFile")
			}
			for _, f := range envFiles {
				f = strings.TrimPrefix(f, "-")
				if !strings.HasPrefix(f, etcDir) || strings.Contains(f, "..") {
					t.Errorf("EnvironmentFile %s is not under %s", f, etcDir)
					continue
				}
				base := strings.TrimPrefix(f, etcDir)
				_, e1 := os.Stat(filepath.Join(r, "deploy", systemdDir, "env", base))
				_, e2 := os.Stat(filepath.Join(r, "deploy", "caddy", base))
				if e1 != nil && e2 != nil {
					t.Errorf("EnvironmentFile %s has no example in deploy/systemd/env or deploy/caddy", f)
				}
			}
			user := u.get("Service", "User")
			if user == "" || user == "root" || user == "0" {
				t.Errorf("User=%q: every unit runs as its own unprivileged user", user)
			}
			for k, want := range requiredHardening {
				if k == "CapabilityBoundingSet" || k == "AmbientCapabilities" {
					if !u.has("Service", k) || u.get("Service", k) != "" {
						t.Errorf("%s=%q, want it present and empty", k, u.get("Service", k))
					}
					continue
				}
				if got := u.get("Service", k); got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			if !slices.Contains(u.all("Service", "SystemCallFilter"), "@system-service") {
				t.Error("SystemCallFilter=@system-service missing")
			}
			if u.name == "guardian-caddy.service" && !slices.Contains(u.all("Service", "SystemCallFilter"), "~io_uring_setup io_uring_enter io_uring_register") {
				t.Error("guardian-caddy.service does not refuse io_uring to its functions")
			}
			privileged := slices.Contains(u.all("Service", "SystemCallFilter"), "~@privileged")
			if why, ok := withoutPrivilegedFilter[u.name]; ok && privileged {
				t.Errorf("SystemCallFilter=~@privileged is set, but withoutPrivilegedFilter says it cannot be (%s): update one or the other", why)
			} else if !ok && !privileged {
				t.Error("SystemCallFilter=~@privileged missing")
			}
			if !u.has("Service", "MemoryDenyWriteExecute") {
				t.Error("MemoryDenyWriteExecute not decided (yes, or no with a reason)")
			}
			if user == "postgres" && u.get("Service", "RemoveIPC") != "no" {
				t.Error("runs as postgres: RemoveIPC must be no, or stopping the unit removes the live server's shared memory")
			}
			env := map[string]string{}
			for _, line := range u.all("Service", "Environment") {
				k, v, _ := strings.Cut(line, "=")
				env[k] = v
			}
			if job == "" { // the edge
				if u.get("Service", "RuntimeDirectory") == "" || !strings.HasPrefix(env["TMPDIR"], "/run/"+u.get("Service", "RuntimeDirectory")) {
					t.Errorf("the functions' directory ($TMPDIR/guardian-functions-<uid>) must be in the RuntimeDirectory, TMPDIR=%q", env["TMPDIR"])
				}
				if !strings.HasPrefix(env["GUARDIAN_ADMIN_ADDR"], "unix/") {
					t.Errorf("GUARDIAN_ADMIN_ADDR=%q: the admin API must be a unix socket", env["GUARDIAN_ADMIN_ADDR"])
				}
				if u.get("Service", "LimitNOFILE") == "" {
					t.Error("LimitNOFILE missing")
				}
				return
			}
			// Jobs keep, name and delete data by the clock: at boot, a
			// timer's missed run must wait for its synchronisation. The
			// target is passive: ordered after, never pulled in
			// (systemd.special(7)); the service that holds it is.
			after := strings.Fields(strings.Join(u.all("Unit", "After"), " "))
			wants := strings.Fields(strings.Join(slices.Concat(u.all("Unit", "Wants"), u.all("Unit", "Requires")), " "))
			if !slices.Contains(after, "time-sync.target") || slices.Contains(wants, "time-sync.target") {
				t.Errorf("After=%q Wants/Requires=%q: a job is ordered after time-sync.target and does not pull it in", after, wants)
			}
			// A job with targets on the backup host reaches them over WireGuard.
			jobEnv := envFile(t, filepath.Join(r, "deploy", systemdDir, "env", job+".env"))
			for _, k := range backupHostTargets {
				if jobEnv[k] != "" && !slices.Contains(after, "wg-quick@wg0.service") {
					t.Errorf("%s.env sets %s, but the unit is not After=wg-quick@wg0.service", job, k)
				}
			}
			if u.get("Service", "Type") != "oneshot" {
				t.Errorf("Type=%q, want oneshot", u.get("Service", "Type"))
			}
			if !slices.Contains(strings.Fields(strings.Join(u.all("Service", "SuccessExitStatus"), " ")), "75") {
				t.Error("SuccessExitStatus=75 missing: a run that finds the lock taken is not a failure")
			}
			if want := "/run/guardian-jobs/" + job; env["GUARDIAN_JOB_LOCK_DIR"] != want || u.get("Service", "RuntimeDirectory") != "guardian-jobs/"+job {
				t.Errorf("GUARDIAN_JOB_LOCK_DIR=%q RuntimeDirectory=%q, want %s", env["GUARDIAN_JOB_LOCK_DIR"], u.get("Service", "RuntimeDirectory"), want)
			}
			metrics := env["GUARDIAN_JOB_METRICS_DIR"]
			if metrics == "" || !slices.Contains(strings.Fields(u.get("Service", "ReadWritePaths")), metrics) {
				t.Errorf("GUARDIAN_JOB_METRICS_DIR=%q must be set and in ReadWritePaths", metrics)
			}
			if want := etcDir + job + ".env"; !slices.Contains(envFiles, want) {
				t.Errorf("EnvironmentFile: want the job's own %s", want)
			}
			if strings.Contains(u.name, "@") {
				base, ok := byName["guardian-"+job+".service"]
				if !ok {
					t.Fatalf("template without guardian-%s.service", job)
				}
				for k, v := range base.sections["Service"] {
					if k != "ExecStart" && !slices.Equal(v, u.sections["Service"][k]) {
						t.Errorf("%s differs from guardian-%s.service (%q vs %q)", k, job, u.sections["Service"][k], v)
					}
				}
			}
		})
	}
}

func TestCrontabMatchesTimers(t *testing.T) {
	r := root(t)
	text := read(t, filepath.Join(r, "deploy", "cron", "guardian-jobs.crontab"))
	if !regexp.MustCompile(`(?m)^CRON_TZ=UTC$`).MatchString(text) {
		t.Error("CRON_TZ=UTC missing")
	}
	if regexp.MustCompile(`(?m)^[^#].*\bflock\b`).MatchString(text) {
		t.Error("the jobs lock themselves: no flock in the crontab")
	}
	type entry struct{ when, user string }
	lines := map[string][]entry{}
	line := regexp.MustCompile(`^(\S+\s+\S+\s+\S+\s+\S+\s+\S+)\s+(\S+)\s+/usr/lib/guardian/guardian-cron-job ([a-z0-9-]+)(?: ([a-z]+))?\s*$`)
	for _, l := range strings.Split(text, "\n") {
		if m := line.FindStringSubmatch(l); m != nil {
			key := m[3] // the job, or for a mode the unit's base name
			if m[4] != "" {
				key += "-" + m[4]
				if jobModes[key] != m[3] {
					t.Errorf("crontab: %q runs %s with %s, which is not a mode in jobModes", l, m[3], m[4])
				}
			}
			lines[key] = append(lines[key], entry{strings.Join(strings.Fields(m[1]), " "), m[2]})
		}
	}
	for _, u := range units(t, "guardian-*.timer") {
		job := unitBase(u.name)
		svc := parseUnit(t, strings.TrimSuffix(u.path, ".timer")+".service")
		var want, got []string
		for _, c := range u.all("Timer", "OnCalendar") {
			want = append(want, onCalendarToCron(t, c))
		}
		for _, e := range lines[job] {
			got = append(got, e.when)
			if e.user != svc.get("Service", "User") {
				t.Errorf("crontab runs %s as %s, the unit as %s", job, e.user, svc.get("Service", "User"))
			}
		}
		sort.Strings(want)
		sort.Strings(got)
		if !slices.Equal(want, got) {
			t.Errorf("%s: crontab schedule %q, timer %q", job, got, want)
		}
	}
}

func TestCronWrapper(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	r := root(t)
	fake := t.TempDir()
	for _, d := range []string{"usr/lib/guardian/functions", "etc/guardian", "bin"} {
		if err := os.MkdirAll(filepath.Join(fake, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(fake, "out")
	logged := filepath.Join(fake, "logged")
	job := "#!/bin/sh\necho \"$GUARDIAN_X|$GUARDIAN_Y|$GUARDIAN_JOB_LOCK_DIR|$GUARDIAN_JOB_METRICS_DIR|$*\" >" + out + "\necho '{\"job\":\"fake\",\"status\":\"ok\"}'\nexit \"$FAKE_EXIT\"\n"
	logger := "#!/bin/sh\ncat >>" + logged + "\n"
	for p, body := range map[string]string{"usr/lib/guardian/functions/fake-job": job, "bin/logger": logger} {
		if err := os.WriteFile(filepath.Join(fake, p), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(fake, "etc/guardian/fake-job.env"), []byte("# comment\nGUARDIAN_X=one\nGUARDIAN_Y=\"two words\"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		exit, want int
	}{{0, 0}, {75, 0}, {1, 1}, {2, 2}} {
		cmd := exec.Command("bash", filepath.Join(r, "deploy", "cron", "guardian-cron-job"), "fake-job", "arg1")
		cmd.Env = []string{"PATH=" + filepath.Join(fake, "bin") + ":/usr/bin:/bin", "GUARDIAN_CRON_ROOT=" + fake, "FAKE_EXIT=" + strconv.Itoa(c.exit)}
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.want {
			t.Errorf("job exit %d: wrapper exit %d, want %d", c.exit, code, c.want)
		}
	}
	want := "one|two words|" + fake + "/run/guardian-jobs/fake-job|" + fake + "/var/lib/guardian-metrics|arg1\n"
	if got := read(t, out); got != want {
		t.Errorf("the job saw %q, want %q", got, want)
	}
	if got := read(t, logged); !strings.Contains(got, `"status":"ok"`) {
		t.Errorf("the result line did not reach the logger: %q", got)
	}
	cmd := exec.Command("bash", filepath.Join(r, "deploy", "cron", "guardian-cron-job"), "../etc")
	if err := cmd.Run(); err == nil {
		t.Error("a job name with a path in it was accepted")
	}
}

// TestEnvExamples: the example env files parse the same for systemd and
// sh, and hold every variable the code they configure reads.
func TestEnvExamples(t *testing.T) {
	r := root(t)
	paths, _ := filepath.Glob(filepath.Join(r, "deploy", systemdDir, "env", "*.env"))
	paths = append(paths, filepath.Join(r, "deploy", "caddy", "cloudflare-ips.env"))
	parsed := map[string]map[string]string{}
	for _, p := range paths {
		vars := envFile(t, p)
		parsed[filepath.Base(p)] = vars
		if _, err := exec.LookPath("sh"); err == nil {
			out, err := exec.Command("sh", "-c", `set -a; . "$1"; set +a; env -0`, "sh", p).Output()
			if err != nil {
				t.Errorf("sh cannot read %s: %v", p, err)
				continue
			}
			shVars := map[string]string{}
			for _, kv := range bytes.Split(out, []byte{0}) {
				if k, v, ok := strings.Cut(string(kv), "="); ok {
					shVars[k] = v
				}
			}
			for k, v := range vars {
				if shVars[k] != v {
					t.Errorf("%s: %s reads %q in sh, %q for systemd", filepath.Base(p), k, shVars[k], v)
				}
			}
		}
	}

	// Jobs: shared/job's alert settings, and every GUARDIAN_ name a job
	// in the tree spells out in its code.
	literal := regexp.MustCompile(`"(GUARDIAN_[A-Z0-9_]+)"`)
	setByUnit := map[string]bool{"GUARDIAN_JOB_LOCK_DIR": true, "GUARDIAN_JOB_METRICS_DIR": true}
	for _, job := range scheduledJobs(t) {
		vars := parsed[job+".env"]
		for _, k := range []string{"GUARDIAN_JOB_ALERT_WEBHOOKS", "GUARDIAN_JOB_ALERT_EMAIL", "GUARDIAN_SMTP_ADDR", "GUARDIAN_SMTP_FROM"} {
			if _, ok := vars[k]; !ok {
				t.Errorf("%s.env: %s missing", job, k)
			}
		}
		for k := range vars {
			if setByUnit[k] {
				t.Errorf("%s.env sets %s, which the unit sets", job, k)
			}
		}
		files, _ := filepath.Glob(filepath.Join(r, "functions", "jobs", job, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			for _, m := range literal.FindAllStringSubmatch(read(t, f), -1) {
				if _, ok := vars[m[1]]; !ok && !setByUnit[m[1]] && !strings.Contains(read(t, filepath.Join(r, "deploy", systemdDir, "env", job+".env")), "#"+m[1]+"=") {
					t.Errorf("functions/jobs/%s reads %s; deploy/systemd/env/%s.env does not list it", job, m[1], job)
				}
			}
		}
	}

	// The edge: every {$VAR} of the Caddyfile and every variable a route
	// passes to its function is in caddy.env, cloudflare-ips.env or the unit.
	edge := parseUnit(t, filepath.Join(r, "deploy", systemdDir, "guardian-caddy.service"))
	have := map[string]bool{}
	for _, line := range edge.all("Service", "Environment") {
		k, _, _ := strings.Cut(line, "=")
		have[k] = true
	}
	caddyEnvText := read(t, filepath.Join(r, "deploy", systemdDir, "env", "caddy.env"))
	for _, f := range []string{"caddy.env", "cloudflare-ips.env"} {
		for k := range parsed[f] {
			have[k] = true
		}
	}
	caddyfile := read(t, filepath.Join(r, "Caddyfile"))
	var needed []string
	for _, m := range regexp.MustCompile(`\{\$(GUARDIAN_[A-Z0-9_]+)(?::[^}]*)?\}`).FindAllStringSubmatch(caddyfile, -1) {
		needed = append(needed, m[1])
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*env\s+(.+)$`).FindAllStringSubmatch(caddyfile, -1) {
		for _, f := range strings.Fields(m[1]) {
			if _, from, renamed := strings.Cut(f, "="); renamed {
				f = from // NAME=FROM: Caddy must have FROM
			}
			needed = append(needed, f)
		}
	}
	for _, k := range needed {
		if !have[k] && !strings.Contains(caddyEnvText, "#"+k+"=") {
			t.Errorf("the Caddyfile uses %s; caddy.env (or the unit) does not set it", k)
		}
	}
	for _, k := range []string{"GUARDIAN_PG_DSN", "GUARDIAN_DEMO_PASSWORD", "GUARDIAN_PGBACKREST_REPO1_CIPHER_PASS", "GUARDIAN_BACKUP_AGE_IDENTITY"} {
		if have[k] {
			t.Errorf("caddy.env holds %s, which the edge never needs", k)
		}
	}
	// The decrypting age identity lives with restore-verify only.
	for f, vars := range parsed {
		if _, ok := vars["GUARDIAN_BACKUP_AGE_IDENTITY"]; ok && f != "restore-verify.env" {
			t.Errorf("%s holds GUARDIAN_BACKUP_AGE_IDENTITY; only restore-verify may", f)
		}
	}
}

func cloudflareRanges(t *testing.T) (fromEnv, fromSnippet []string, headers []string) {
	t.Helper()
	r := root(t)
	fromEnv = strings.Fields(envFile(t, filepath.Join(r, "deploy", "caddy", "cloudflare-ips.env"))["GUARDIAN_TRUSTED_PROXIES"])
	snippet := read(t, filepath.Join(r, "deploy", "caddy", "cloudflare-real-ip.caddy"))
	for _, l := range strings.Split(snippet, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 2 && f[0] == "trusted_proxies" && f[1] == "static":
			fromSnippet = f[2:]
		case len(f) > 1 && f[0] == "client_ip_headers":
			headers = f[1:]
		}
	}
	return fromEnv, fromSnippet, headers
}

func TestCloudflareRanges(t *testing.T) {
	env, snippet, _ := cloudflareRanges(t)
	if len(env) < 10 {
		t.Fatalf("only %d ranges in cloudflare-ips.env", len(env))
	}
	a, b := slices.Clone(env), slices.Clone(snippet)
	sort.Strings(a)
	sort.Strings(b)
	if !slices.Equal(a, b) {
		t.Errorf("cloudflare-ips.env and cloudflare-real-ip.caddy list different ranges:\n%v\n%v", a, b)
	}
	var v4, v6 int
	for _, s := range env {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p {
			t.Errorf("%q is not a canonical CIDR range", s)
			continue
		}
		if p.Addr().IsPrivate() || p.Addr().IsLoopback() || p.Bits() < 8 {
			t.Errorf("%s cannot be one of Cloudflare's edge ranges", s)
		}
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 == 0 || v6 == 0 {
		t.Errorf("%d IPv4 and %d IPv6 ranges: both families expected", v4, v6)
	}
	copied := regexp.MustCompile(`(?m)^# Copied: (\d{4}-\d{2}-\d{2})`)
	for _, f := range []string{"cloudflare-ips.env", "cloudflare-real-ip.caddy"} {
		if !copied.MatchString(read(t, filepath.Join(root(t), "deploy", "caddy", f))) {
			t.Errorf("%s: no '# Copied: YYYY-MM-DD' line", f)
		}
	}
}

// adapt runs the caddyfile adapter in-process (as `caddy adapt` does) and
// returns the servers' trusted proxy ranges and client IP headers (every
// server's, checked to agree).
func adapt(t *testing.T, path string) (ranges, headers []string) {
	t.Helper()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapt %s: %v", path, err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					TrustedProxies struct {
						Source string   `json:"source"`
						Ranges []string `json:"ranges"`
					} `json:"trusted_proxies"`
					ClientIPHeaders      []string `json:"client_ip_headers"`
					TrustedProxiesStrict int      `json:"trusted_proxies_strict"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Apps.HTTP.Servers) == 0 {
		t.Fatalf("%s: no server", path)
	}
	// Every server (the public site's, the metrics site's) has the global
	// options, the same for each.
	for name, s := range cfg.Apps.HTTP.Servers {
		if s.TrustedProxies.Source != "static" {
			t.Errorf("%s: %s: trusted_proxies source %q", path, name, s.TrustedProxies.Source)
		}
		// Right to left: the leftmost X-Forwarded-For entry is the
		// client's to write.
		if s.TrustedProxiesStrict == 0 {
			t.Errorf("%s: %s: trusted_proxies_strict is off", path, name)
		}
		if ranges != nil && (!slices.Equal(ranges, s.TrustedProxies.Ranges) || !slices.Equal(headers, s.ClientIPHeaders)) {
			t.Errorf("%s: %s trusts other proxies or headers than another server", path, name)
		}
		ranges, headers = s.TrustedProxies.Ranges, s.ClientIPHeaders
	}
	return ranges, headers
}

// TestCaddyTrustsCloudflareAsTheLimiterSees: the ranges reach the server
// options both ways, with the header order of Guardian's Caddyfile, which
// is what sets the client address guardian_ratelimit charges.
func TestCaddyTrustsCloudflareAsTheLimiterSees(t *testing.T) {
	r := root(t)
	envRanges, snippetRanges, snippetHeaders := cloudflareRanges(t)
	t.Setenv("GUARDIAN_TRUSTED_PROXIES", strings.Join(envRanges, " "))
	// The header as the env file sets it, not as the runner's shell may.
	t.Setenv("GUARDIAN_CLIENT_IP_HEADERS", envFile(t, filepath.Join(r, "deploy", "caddy", "cloudflare-ips.env"))["GUARDIAN_CLIENT_IP_HEADERS"])

	gotRanges, gotHeaders := adapt(t, filepath.Join(r, "Caddyfile"))
	if !slices.Equal(gotRanges, envRanges) {
		t.Errorf("Guardian's Caddyfile with cloudflare-ips.env trusts %v, want %v", gotRanges, envRanges)
	}
	if !slices.Equal(gotHeaders, snippetHeaders) {
		t.Errorf("client_ip_headers: Guardian's Caddyfile %v, the snippet %v", gotHeaders, snippetHeaders)
	}

	dir := t.TempDir()
	snippet := read(t, filepath.Join(r, "deploy", "caddy", "cloudflare-real-ip.caddy"))
	if err := os.WriteFile(filepath.Join(dir, "cloudflare-real-ip.caddy"), []byte(snippet), 0o644); err != nil {
		t.Fatal(err)
	}
	site := "{\n\tauto_https off\n\tservers {\n\t\timport cloudflare-real-ip.caddy\n\t}\n}\nhttp://:8080 {\n\trespond \"{client_ip}\"\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	gotRanges, gotHeaders = adapt(t, filepath.Join(dir, "Caddyfile"))
	if !slices.Equal(gotRanges, snippetRanges) || !slices.Equal(gotHeaders, snippetHeaders) {
		t.Errorf("a Caddyfile importing the snippet trusts %v with headers %v", gotRanges, gotHeaders)
	}
}

func TestRefreshCloudflareScript(t *testing.T) {
	for _, tool := range []string{"bash", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	r := root(t)
	envRanges, _, _ := cloudflareRanges(t)
	dir := t.TempDir()
	var v4, v6 []string
	for _, s := range envRanges {
		if strings.Contains(s, ":") {
			v6 = append(v6, s)
		} else {
			v4 = append(v4, s)
		}
	}
	write := func(name string, lines []string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("v4", v4)
	write("v6", v6)
	for _, f := range []string{"cloudflare-ips.env", "cloudflare-real-ip.caddy"} {
		write(f, []string{strings.TrimSuffix(read(t, filepath.Join(r, "deploy", "caddy", f)), "\n")})
	}
	run := func(args ...string) (int, string) {
		cmd := exec.Command("bash", append([]string{filepath.Join(r, "deploy", "caddy", "refresh-cloudflare-ips.sh")}, args...)...)
		cmd.Env = append(os.Environ(), "CF_IPS_V4_URL=file://"+dir+"/v4", "CF_IPS_V6_URL=file://"+dir+"/v6")
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	files := []string{filepath.Join(dir, "cloudflare-ips.env"), filepath.Join(dir, "cloudflare-real-ip.caddy")}
	if code, out := run(files...); code != 0 {
		t.Fatalf("the shipped lists differ from themselves: %d %s", code, out)
	}
	write("v4", append(slices.Clone(v4[1:]), "45.64.0.0/15"))
	if code, out := run(files...); code != 1 || !strings.Contains(out, "add    45.64.0.0/15") || !strings.Contains(out, "remove "+v4[0]) {
		t.Errorf("a changed list: exit %d, %s", code, out)
	}
	if code, out := run(append([]string{"--write"}, files...)...); code != 0 {
		t.Fatalf("--write: exit %d, %s", code, out)
	}
	for _, f := range files {
		if got := read(t, f); !strings.Contains(got, "45.64.0.0/15") || strings.Contains(got, v4[0]+" ") {
			t.Errorf("%s not rewritten", f)
		}
	}
	before := read(t, files[0])
	// Lists that would trust everyone, or space Cloudflare cannot hold,
	// are refused without writing: each case replaces one list.
	for _, tc := range []struct {
		file  string
		lines []string
	}{
		{"v6", []string{"2400:cb00::/32", "not-a-range"}},
		{"v4", []string{"0.0.0.0/0", "0.0.0.0/0", "0.0.0.0/0", "0.0.0.0/0", "0.0.0.0/0"}},
		{"v4", append(slices.Clone(v4[:4]), "999.1.1.1/8")},
		{"v4", append(slices.Clone(v4[:4]), "1.0.0.0/4")},
		{"v4", append(slices.Clone(v4[:4]), "10.0.0.0/8")},
		{"v4", append(slices.Clone(v4[:4]), "192.168.0.0/16")},
		{"v4", []string{v4[0], v4[0], v4[0], v4[0], v4[0]}}, // five lines, one range
		{"v6", append(slices.Clone(v6[:2]), "::/0")},
		{"v6", append(slices.Clone(v6[:2]), "fd00::/8")},
		{"v6", append(slices.Clone(v6[:2]), "2400::/8")},
	} {
		good := map[string][]string{"v4": v4, "v6": v6}
		write("v4", good["v4"])
		write("v6", good["v6"])
		write(tc.file, tc.lines)
		if code, out := run("--write", files[0]); code != 2 || read(t, files[0]) != before {
			t.Errorf("%s %v must be refused without writing: exit %d, %s", tc.file, tc.lines, code, out)
		}
	}
}

// TestPrivateLinkAddresses: the app host's WireGuard address is the one
// sshd, the backup accounts and the SFTP targets pin, and the backup host's
// is the one the targets name.
func TestPrivateLinkAddresses(t *testing.T) {
	r := root(t)
	addr := func(file string) netip.Prefix {
		m := regexp.MustCompile(`(?m)^Address = (\S+)$`).FindStringSubmatch(read(t, filepath.Join(r, "deploy", "wireguard", file)))
		if m == nil {
			t.Fatalf("%s: no Address", file)
		}
		p, err := netip.ParsePrefix(m[1])
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	app, backup := addr("wg0-app-host.conf"), addr("wg0-backup-host.conf")
	link := netip.MustParsePrefix("10.100.0.0/24")
	for _, p := range []netip.Prefix{app, backup} {
		if !link.Contains(p.Addr()) || p.Bits() != 24 {
			t.Errorf("wg0 address %s is not on %s", p, link)
		}
	}
	allowed := func(file string) string {
		m := regexp.MustCompile(`(?m)^AllowedIPs = (\S+)$`).FindStringSubmatch(read(t, filepath.Join(r, "deploy", "wireguard", file)))
		if m == nil {
			t.Fatalf("%s: no AllowedIPs", file)
		}
		return m[1]
	}
	if got := allowed("wg0-app-host.conf"); got != backup.Addr().String()+"/32" {
		t.Errorf("app host routes %s to the backup host, want only %s/32", got, backup.Addr())
	}
	if got := allowed("wg0-backup-host.conf"); got != app.Addr().String()+"/32" {
		t.Errorf("backup host accepts %s from the app host, want only %s/32", got, app.Addr())
	}
	sshd := read(t, filepath.Join(r, "deploy", "backup-host", "sshd_config.d", "00-guardian-backup.conf"))
	if !strings.Contains(sshd, "Address "+app.Addr().String()+"/32") || !strings.Contains(sshd, "Address *,!"+app.Addr().String()+"/32") {
		t.Errorf("sshd Match blocks do not pin %s", app.Addr())
	}
	if !strings.Contains(read(t, filepath.Join(r, "deploy", "backup-host", "setup.sh")), "APP_WG_ADDR:-"+app.Addr().String()+"}") {
		t.Errorf("setup.sh's default from= address is not %s", app.Addr())
	}
	for _, f := range []string{"backup-clickhouse.env", "restore-verify.env"} {
		targets := envFile(t, filepath.Join(r, "deploy", systemdDir, "env", f))["GUARDIAN_BACKUP_SFTP_TARGETS"]
		if !strings.Contains(targets, "@"+backup.Addr().String()+":") {
			t.Errorf("%s: SFTP targets %q do not name the backup host's wg0 address %s", f, targets, backup.Addr())
		}
	}
}

// ------------------------------------------- checks with the real tools

func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: unit files checked by the parser above only")
	}
	r := root(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	unitDir := filepath.Join(dir, "units")
	for _, d := range []string{bin, unitDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stub := []byte("#!/bin/sh\nexit 0\n")
	var names []string
	paths, _ := filepath.Glob(filepath.Join(r, "deploy", systemdDir, "guardian*"))
	for _, p := range paths {
		if strings.HasSuffix(p, ".conf") {
			continue
		}
		text := read(t, p)
		// Each binary a command runs becomes an executable stub under dir.
		for _, m := range regexp.MustCompile(`(?m)^Exec[A-Za-z]*=[-@:+!]*(`+regexp.QuoteMeta(installDir)+`[A-Za-z0-9/_-]+)`).FindAllStringSubmatch(text, -1) {
			m := m[1]
			stubPath := filepath.Join(bin, strings.TrimPrefix(m, installDir))
			if err := os.MkdirAll(filepath.Dir(stubPath), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(stubPath, stub, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		text = strings.ReplaceAll(text, installDir, bin+"/")
		name := filepath.Base(p)
		if strings.HasSuffix(name, "@.service") { // verify an instance of the template
			name = strings.Replace(name, "@.service", "@full.service", 1)
		}
		if err := os.WriteFile(filepath.Join(unitDir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, "./"+name)
	}
	cmd := exec.Command(sa, append([]string{"verify", "--man=no", "--generators=no"}, names...)...)
	cmd.Dir = unitDir
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	for _, u := range units(t, "guardian-*.timer") {
		for _, c := range u.all("Timer", "OnCalendar") {
			if out, err := exec.Command(sa, "calendar", c).CombinedOutput(); err != nil {
				t.Errorf("%s: OnCalendar=%s: %v\n%s", u.name, c, err, out)
			}
		}
	}

	// Exposure as systemd scores it (0 best, 10 worst).
	score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for _, n := range names {
		if !strings.HasSuffix(n, ".service") {
			continue
		}
		out, err := exec.Command(sa, "security", "--offline=yes", filepath.Join(unitDir, n)).CombinedOutput()
		m := score.FindSubmatch(out)
		if err != nil || m == nil {
			t.Errorf("systemd-analyze security %s did not score it (%v)\n%s", n, err, out)
			continue
		}
		if v, _ := strconv.ParseFloat(string(m[1]), 64); v > 2.5 {
			t.Errorf("%s: exposure %s, want at most 2.5", n, m[1])
		} else {
			t.Logf("%s: exposure %s", n, m[1])
		}
	}
}

// TestSysusersAndTmpfiles applies both files to a scratch root (a copy of
// this machine's user database) and checks the users, groups and modes the
// units rely on.
func TestSysusersAndTmpfiles(t *testing.T) {
	sysusers, err1 := exec.LookPath("systemd-sysusers")
	tmpfiles, err2 := exec.LookPath("systemd-tmpfiles")
	if err1 != nil || err2 != nil {
		t.Skip("systemd-sysusers or systemd-tmpfiles is not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("systemd-tmpfiles --root must run as root to set owners")
	}
	r := root(t)
	scratch := t.TempDir()
	for _, d := range []string{"etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d", "run", "var/lib", "var/log"} {
		if err := os.MkdirAll(filepath.Join(scratch, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"passwd", "group", "shadow", "gshadow"} {
		b, err := os.ReadFile(filepath.Join("/etc", f))
		if err != nil {
			continue
		}
		// The units expect Debian's postgres user (from the postgresql package).
		if !regexp.MustCompile(`(?m)^postgres:`).Match(b) {
			switch f {
			case "passwd":
				b = append(b, "postgres:x:64999:64999::/var/lib/postgresql:/bin/sh\n"...)
			case "group":
				b = append(b, "postgres:x:64999:\n"...)
			}
		}
		if err := os.WriteFile(filepath.Join(scratch, "etc", f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyFile := func(from, to string) {
		if err := os.WriteFile(filepath.Join(scratch, to), []byte(read(t, filepath.Join(r, "deploy", systemdDir, from))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("guardian.sysusers.conf", "usr/lib/sysusers.d/guardian.conf")
	copyFile("guardian.tmpfiles.conf", "usr/lib/tmpfiles.d/guardian.conf")
	if out, err := exec.Command(sysusers, "--root="+scratch, "guardian.conf").CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	if out, err := exec.Command(tmpfiles, "--root="+scratch, "--create", "guardian.conf").CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	passwd := read(t, filepath.Join(scratch, "etc", "passwd"))
	for _, u := range units(t, "guardian-*.service") {
		user := u.get("Service", "User")
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(user) + `:`).MatchString(passwd) {
			t.Errorf("%s runs as %s, which sysusers does not create", u.name, user)
		}
	}
	mode := func(p string) os.FileMode {
		st, err := os.Stat(filepath.Join(scratch, p))
		if err != nil {
			t.Errorf("tmpfiles did not create %s", p)
			return 0
		}
		return st.Mode()
	}
	if m := mode("var/lib/guardian-metrics"); m&os.ModeSticky == 0 || m.Perm() != 0o775 {
		t.Errorf("/var/lib/guardian-metrics is %v, want sticky and 0775", m)
	}
	for _, job := range scheduledJobs(t) {
		if m := mode("run/guardian-jobs/" + job); m.Perm() != 0o700 {
			t.Errorf("/run/guardian-jobs/%s is %v, want 0700", job, m)
		}
	}
	// Every timer's job writes a metrics file of its own name (a mode such
	// as the mirror included): it must exist, owned by that job's user,
	// before any other job can take the name.
	timers, _ := filepath.Glob(filepath.Join(r, "deploy", "systemd", "guardian-*.timer"))
	if len(timers) == 0 {
		t.Fatal("no timers")
	}
	for _, timer := range timers {
		job := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(timer), "guardian-"), ".timer")
		mode("var/lib/guardian-metrics/guardian_job_" + strings.ReplaceAll(job, "-", "_") + ".prom")
	}
}

// sysctlDropIn parses a sysctl.d file: key -> value.
func sysctlDropIn(t *testing.T, path string) map[string]string {
	t.Helper()
	kv := map[string]string{}
	for i, line := range strings.Split(read(t, path), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s:%d: not key = value: %q", path, i+1, line)
		}
		kv[strings.TrimPrefix(strings.TrimSpace(k), "-")] = strings.TrimSpace(v)
	}
	return kv
}

// The functions run as Caddy's user: the app host's sysctl drop-in keeps
// one from tracing or reading the memory of another (Yama's ptrace_scope
// 1 or more), the deployment guide installs it, and installs the function
// binaries execute-only (so the kernel makes each function non-dumpable
// from exec).
func TestSysctlDropIn(t *testing.T) {
	r := root(t)
	kv := sysctlDropIn(t, filepath.Join(r, "deploy", "sysctl.d", "60-guardian.conf"))
	if n, err := strconv.Atoi(kv["kernel.yama.ptrace_scope"]); err != nil || n < 1 || n > 3 {
		t.Errorf("kernel.yama.ptrace_scope = %q, want 1 (or stricter)", kv["kernel.yama.ptrace_scope"])
	}
	guide := read(t, filepath.Join(r, "docs", "deployment.md"))
	if !regexp.MustCompile(`install -m 0644 deploy/sysctl\.d/60-guardian\.conf /etc/sysctl\.d/`).MatchString(guide) {
		t.Error("docs/deployment.md does not install deploy/sysctl.d/60-guardian.conf into /etc/sysctl.d/")
	}
	if !regexp.MustCompile(`(?m)^install -m 0711 -o root -g root linux_amd64/functions/\* /usr/lib/guardian-\$v/functions/$`).MatchString(guide) {
		t.Error("docs/deployment.md does not install the function binaries root:root 0711")
	}
	// Caddy too: systemctl reload runs a caddy process as Caddy's user,
	// every secret in its environment, beside the live functions.
	if !regexp.MustCompile(`(?m)^install -m 0711 -o root -g root linux_amd64/caddy linux_amd64/guardianctl /usr/lib/guardian-\$v/$`).MatchString(guide) {
		t.Error("docs/deployment.md does not install caddy and guardianctl root:root 0711")
	}
	t.Run("keys exist on this kernel", func(t *testing.T) {
		if _, err := os.Stat("/proc/sys/kernel/yama"); err != nil {
			t.Skip("this kernel has no Yama")
		}
		for k := range kv {
			if _, err := os.Stat(filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))); err != nil {
				t.Errorf("%s: %v", k, err)
			}
		}
	})
}

// TestAppHostSshdIsKeysOnly: the app host's drop-in, read first, leaves
// operators keys alone, whatever a later drop-in says.
func TestAppHostSshdIsKeysOnly(t *testing.T) {
	sshd, hostKey, dir := sshdForTest(t)
	cfg := filepath.Join(dir, "sshd_config")
	// Debian's sshd_config with a cloud image's drop-in after ours.
	later := filepath.Join(dir, "50-cloud-init.conf")
	if err := os.WriteFile(later, []byte("PasswordAuthentication yes\nPermitRootLogin yes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	main := "Include " + filepath.Join(root(t), "deploy", "app-host", "sshd_config.d", "*.conf") + "\nInclude " + later + "\n" +
		"KbdInteractiveAuthentication yes\nUsePAM yes\nHostKey " + hostKey + "\nPidFile " + filepath.Join(dir, "sshd.pid") + "\n"
	if err := os.WriteFile(cfg, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sshd, "-t", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t: %v\n%s", err, out)
	}
	for _, spec := range []string{"user=operator,addr=203.0.113.5,host=x", "user=root,addr=10.100.0.2,host=y"} {
		out, err := exec.Command(sshd, "-T", "-f", cfg, "-C", spec).CombinedOutput()
		if err != nil {
			t.Fatalf("sshd -T: %v\n%s", err, out)
		}
		got := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				got[k] = v
			}
		}
		for k, v := range map[string]string{
			"passwordauthentication": "no", "kbdinteractiveauthentication": "no",
			"authenticationmethods": "publickey", "permitrootlogin": "without-password",
			"permitemptypasswords": "no",
		} {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q", spec, k, got[k], v)
			}
		}
	}
}

// sshdForTest finds sshd, makes a host key and returns them with a
// directory for the test's config, skipping where sshd cannot be checked.
func sshdForTest(t *testing.T) (sshd, hostKey, dir string) {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/sshd"); err2 != nil {
			t.Skip("sshd (openssh-server) is not installed")
		}
		sshd = "/usr/sbin/sshd"
	}
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Skip("ssh-keygen is not installed: no host key for sshd -t")
	}
	if _, err := os.Stat("/run/sshd"); err != nil {
		if os.Geteuid() != 0 {
			t.Skip("sshd -t needs its privilege separation directory /run/sshd, and only root may create it")
		}
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Skipf("cannot create /run/sshd: %v", err)
		}
	}
	dir = t.TempDir()
	hostKey = filepath.Join(dir, "host_ed25519")
	if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	return sshd, hostKey, dir
}

func TestSshdAcceptsBackupHostConfig(t *testing.T) {
	sshd, hostKey, dir := sshdForTest(t)
	r := root(t)
	// Debian's sshd_config: the Include comes first, then its own settings.
	cfg := filepath.Join(dir, "sshd_config")
	main := "Include " + filepath.Join(r, "deploy", "backup-host", "sshd_config.d", "*.conf") + "\n" +
		"KbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\n" +
		"Subsystem sftp /usr/lib/openssh/sftp-server\nHostKey " + hostKey + "\nPidFile " + filepath.Join(dir, "sshd.pid") + "\n"
	if err := os.WriteFile(cfg, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sshd, "-t", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t: %v\n%s", err, out)
	}
	effective := func(spec string) map[string]string {
		out, err := exec.Command(sshd, "-T", "-f", cfg, "-C", spec).CombinedOutput()
		if err != nil {
			t.Fatalf("sshd -T -C %s: %v\n%s", spec, err, out)
		}
		m := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				if _, seen := m[k]; !seen {
					m[k] = v
				}
			}
		}
		return m
	}
	expect := func(spec string, want map[string]string) {
		t.Helper()
		got := effective(spec)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q", spec, k, got[k], v)
			}
		}
	}
	for _, user := range []string{"clickhouse-backup", "pgbackrest"} {
		expect("user="+user+",addr=10.100.0.1,host=app", map[string]string{
			"chrootdirectory": "/srv/guardian-backup/%u",
			// Each key's command= decides (setup.sh): a ForceCommand
			// here would override restore-verify's read-only one.
			"forcecommand":           "none",
			"authorizedkeysfile":     "/etc/ssh/guardian-backup/authorized_keys/%u",
			"authenticationmethods":  "publickey",
			"passwordauthentication": "no",
			"allowtcpforwarding":     "no",
			"allowagentforwarding":   "no",
			"x11forwarding":          "no",
			"permittunnel":           "no",
			"permittty":              "no",
		})
		for _, addr := range []string{"10.100.0.7", "203.0.113.5", "fd00::1"} {
			expect("user="+user+",addr="+addr+",host=x", map[string]string{
				"authorizedkeysfile":     "none",
				"pubkeyauthentication":   "no",
				"passwordauthentication": "no",
			})
		}
	}
	// Other users keep the host's own settings (the Match blocks end with
	// the included file), apart from the host-wide keys-only rule.
	expect("user=operator,addr=10.100.0.1,host=x", map[string]string{
		"chrootdirectory":        "none",
		"forcecommand":           "none",
		"x11forwarding":          "yes",
		"passwordauthentication": "no",
	})
}

func TestNftablesBackupHost(t *testing.T) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("nft (nftables) is not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("nft -c needs root")
	}
	text := strings.ReplaceAll(read(t, filepath.Join(root(t), "deploy", "wireguard", "nftables-backup-host.nft")), "<APP_HOST_PUBLIC_IP>", "192.0.2.10")
	f := filepath.Join(t.TempDir(), "rules.nft")
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(nft, "-c", "-f", f).CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("Operation not permitted")) {
			t.Skipf("nft -c is not permitted here: %s", out)
		}
		t.Errorf("nft -c: %v\n%s", err, out)
	}
}

// TestNoBuildOutputTracked keeps compiled programs out of the repository:
// a binary built by hand at the root and committed by mistake would ship
// an unreviewable, unreproducible artefact beside the source. Skipped
// outside a git checkout.
func TestNoBuildOutputTracked(t *testing.T) {
	r := root(t)
	out, err := exec.Command("git", "-C", r, "ls-files", "-z").Output()
	if err != nil {
		t.Skipf("not a git checkout (%v)", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		f, err := os.Open(filepath.Join(r, name))
		if err != nil {
			continue // deleted in the working tree
		}
		magic := make([]byte, 4)
		n, _ := f.Read(magic)
		f.Close()
		if n == 4 && string(magic) == "\x7fELF" {
			t.Errorf("%s is a compiled program tracked by git; build output belongs in bin/ (make build)", name)
		}
	}
}

// The functions Caddy starts run as Caddy's user and group, so the edge's
// env file (every secret and every function's database login) must be
// readable by neither: systemd reads it as root before dropping to them.
func TestEdgeSecretsAreNotReadableByItsUser(t *testing.T) {
	r := root(t)
	env, err := os.ReadFile(filepath.Join(r, "deploy", systemdDir, "env", "caddy.env"))
	if err != nil {
		t.Fatal(err)
	}
	install := regexp.MustCompile(`(?m)^# Install: install -m (0[0-7]{3}) -o (\S+) -g (\S+) caddy\.env `).FindSubmatch(env)
	if install == nil {
		t.Fatal("caddy.env has no Install line")
	}
	unit, err := os.ReadFile(filepath.Join(r, "deploy", systemdDir, "guardian-caddy.service"))
	if err != nil {
		t.Fatal(err)
	}
	user := regexp.MustCompile(`(?m)^User=(\S+)`).FindSubmatch(unit)
	group := regexp.MustCompile(`(?m)^Group=(\S+)`).FindSubmatch(unit)
	if user == nil || group == nil {
		t.Fatal("guardian-caddy.service names no User= or Group=")
	}
	mode, _ := strconv.ParseUint(string(install[1]), 8, 32)
	owner, grp := string(install[2]), string(install[3])
	if (owner == string(user[1]) && mode&0o400 != 0) || (grp == string(group[1]) && mode&0o040 != 0) || mode&0o004 != 0 {
		t.Fatalf("caddy.env is installed %s %s:%s, readable by the unit's %s:%s (and so by every function)", install[1], owner, grp, user[1], group[1])
	}
	if !strings.Contains(string(unit), "EnvironmentFile=/etc/guardian/caddy.env") {
		t.Fatal("the unit does not load caddy.env")
	}
}

// The backup host's drop-in sorts before the usual numbered ones, so its
// keys-only rule for operators wins over a later "PasswordAuthentication
// yes" (sshd keeps the first value it reads); under its old name it lost.
func TestBackupHostKeysOnlyRuleIsReadFirst(t *testing.T) {
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if sshd, err = exec.LookPath("/usr/sbin/sshd"); err != nil {
			t.Skip("sshd is not installed")
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("sshd -T reads host keys: needs root")
	}
	r := root(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "host_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	ours := read(t, filepath.Join(r, "deploy", "backup-host", "sshd_config.d", "00-guardian-backup.conf"))
	effective := func(ourName string) string {
		d := filepath.Join(dir, strings.TrimSuffix(ourName, ".conf"))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, body := range map[string]string{ourName: ours, "50-cloud-init.conf": "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\n"} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cfg := filepath.Join(d, "sshd_config")
		if err := os.WriteFile(cfg, []byte("Include "+d+"/*.conf\nHostKey "+key+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sshd, "-T", "-f", cfg, "-C", "user=root,host=operator,addr=203.0.113.9").CombinedOutput()
		if err != nil {
			t.Fatalf("sshd -T: %v %s", err, out)
		}
		return string(out)
	}
	if got := effective("00-guardian-backup.conf"); !strings.Contains(got, "\npasswordauthentication no\n") || !strings.Contains(got, "\nkbdinteractiveauthentication no\n") {
		t.Errorf("with the shipped name, an operator may still use a password:\n%s", got)
	}
	if got := effective("guardian-backup.conf"); !strings.Contains(got, "\npasswordauthentication yes\n") {
		t.Errorf("the old name was not overridden: the test cannot tell the names apart")
	}
}

// The backup host's keys each carry their own command: the writers' SFTP
// may write, restore-verify's ("read-only " in the key file) may read and
// nothing more, so a taken restore-verify (it holds the age identity)
// cannot change or delete the backups. Checked against a real sshd with
// the lines setup.sh writes.
func TestBackupHostReadOnlyKeyCannotWrite(t *testing.T) {
	srv := testenv.SFTPServerPerKey(t)
	dir := t.TempDir()
	reader := filepath.Join(dir, "reader")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", reader).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	pub := func(path string) string {
		b, err := exec.Command("ssh-keygen", "-y", "-f", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	keys := filepath.Join(dir, "keys.pub")
	if err := os.WriteFile(keys, []byte(pub(srv.KeyPath)+"\nread-only "+pub(reader)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", filepath.Join(root(t), "deploy", "backup-host", "setup.sh"), "--authorized-keys", "127.0.0.1", keys).Output()
	if err != nil {
		t.Fatalf("setup.sh --authorized-keys: %v", err)
	}
	if err := srv.SetAuthorizedKeys(string(out)); err != nil {
		t.Fatal(err)
	}
	// As the jobs connect: chbackup's session, host key pinned.
	target, err := chbackup.ParseTarget(srv.Target(""))
	if err != nil {
		t.Fatal(err)
	}
	connect := func(key string) *sftp.Client {
		t.Helper()
		s, err := chbackup.DialSession(context.Background(), key, srv.KnownHosts, target)
		if err != nil {
			t.Fatalf("sftp: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s.Client()
	}
	set := filepath.Join(srv.Root, "20261130T040000Z")
	w := connect(srv.KeyPath)
	if err := w.MkdirAll(set); err != nil {
		t.Fatalf("the writer's key: %v", err)
	}
	f, err := w.Create(filepath.Join(set, "blob.age"))
	if err != nil {
		t.Fatalf("the writer's key: %v", err)
	}
	if _, err := f.Write([]byte("ciphertext")); err != nil {
		t.Fatal(err)
	}
	f.Close()

	r := connect(reader)
	got, err := r.Open(filepath.Join(set, "blob.age"))
	if err != nil {
		t.Fatalf("the reader's key cannot read: %v", err)
	}
	b, _ := io.ReadAll(got)
	got.Close()
	if string(b) != "ciphertext" {
		t.Fatalf("read %q", b)
	}
	if _, err := r.Create(filepath.Join(set, "forged.age")); err == nil {
		t.Error("the read-only key created a file")
	}
	if err := r.Remove(filepath.Join(set, "blob.age")); err == nil {
		t.Error("the read-only key removed a backup")
	}
	if err := r.Rename(filepath.Join(set, "blob.age"), filepath.Join(set, "moved.age")); err == nil {
		t.Error("the read-only key renamed a backup")
	}
	if _, err := os.Stat(filepath.Join(set, "blob.age")); err != nil {
		t.Errorf("the backup is gone: %v", err)
	}
}
