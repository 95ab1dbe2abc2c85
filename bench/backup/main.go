// Command backup measures Guardian's ClickHouse backup pipeline
// (shared/chbackup: HTTP Native dump → zstd → age → SFTP, streamed, hashed
// and row-counted in one Go process) against the same work done by hand
// with the command-line tools:
//
//	curl … 'SELECT * FROM t FORMAT Native' | zstd -q | age -r KEY > file
//	sftp -b batch (put file)
//
// sftp cannot put a pipe, so the by-hand run writes the encrypted dump to
// a local file first and its time covers both steps. It dumps the table in
// one stream, where chbackup makes one blob a partition (and also backs up
// the database's other, small, tables): by hand is the simpler job.
//
// It starts a private ClickHouse (deploy/stack/servers.sh) and a private
// sshd (shared/testenv's StartSFTP) on loopback ports, fills a table of the
// snapshots schema with -mib MiB (uncompressed) of snapshot-like rows in
// -partitions daily partitions, then runs the two pipelines -reps times
// each, alternately, against the same sshd, and prints MB/s (of the
// plaintext Native dump, 10^6 bytes) for each, their medians and the ratio
// ours/by-hand (the target is at least 0.6), and the CPU time each spent
// outside ClickHouse and sshd (this process for ours; curl, zstd, age and
// the sftp/ssh client for by hand) — steadier than MB/s on a busy machine.
// Servers, keys and files are
// removed at the end, on error too.
//
// Run it with `make bench-backup` (flags through BENCH_ARGS) or
// `go run ./bench/backup -h`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"filippo.io/age"
	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/glassmkr/guardian/bench/internal/harness"
	"github.com/glassmkr/guardian/shared/chbackup"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

func main() {
	mib := flag.Int("mib", 1024, "MiB of uncompressed table data to generate")
	partitions := flag.Int("partitions", 4, "daily partitions the rows spread over")
	reps := flag.Int("reps", 3, "runs of each pipeline, alternating")
	keep := flag.Bool("keep", false, "keep the temporary directory (servers are stopped anyway)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *mib, *partitions, *reps, *keep)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-backup:", err)
		os.Exit(1)
	}
}

const db = "bench"

func run(ctx context.Context, mib, partitions, reps int, keep bool) (err error) {
	for _, tool := range []string{"curl", "zstd", "age", "sftp"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (deploy/stack/deps.sh)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "guardian-bench-backup-")
	if err != nil {
		return err
	}
	defer func() {
		if keep {
			fmt.Fprintln(os.Stderr, "kept", dir)
		} else {
			_ = os.RemoveAll(dir)
		}
	}()

	fmt.Fprintln(os.Stderr, "starting ClickHouse and sshd...")
	env, err := testenv.Start(filepath.Join(dir, "servers"), "clickhouse")
	if err != nil {
		return err
	}
	defer func() {
		if serr := testenv.Stop(filepath.Join(dir, "servers"), "clickhouse"); serr != nil && err == nil {
			err = serr
		}
	}()
	port, err := freePort()
	if err != nil {
		return err
	}
	srv, err := testenv.StartSFTP(filepath.Join(dir, "sshd"), port)
	if err != nil {
		return err
	}
	defer srv.Stop()

	id, err := age.GenerateX25519Identity()
	if err != nil {
		return err
	}
	target, err := chbackup.ParseTarget(srv.Target("ours"))
	if err != nil {
		return err
	}
	cfg := chbackup.Config{
		ClickHouse: config.ClickHouse{
			Addr: env["GUARDIAN_CLICKHOUSE_ADDR"], User: env["GUARDIAN_CLICKHOUSE_USER"],
			Password: env["GUARDIAN_CLICKHOUSE_PASSWORD"], Database: db,
		},
		HTTPURL:        env["GUARDIAN_CLICKHOUSE_HTTP_URL"],
		Recipients:     []age.Recipient{id.Recipient()},
		Targets:        []chbackup.Target{target},
		SSHKeyFile:     srv.KeyPath,
		KnownHostsFile: srv.KnownHosts,
		KeepDays:       1,
	}
	plain, err := fill(ctx, cfg, mib, partitions)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "table %s.snapshots: %.1f MiB uncompressed in %d partitions\n", db, float64(plain)/(1<<20), partitions)

	hand := byHand{cfg: cfg, srv: srv, dir: dir, recipient: id.Recipient().String()}
	if err := hand.prepare(); err != nil {
		return err
	}
	var ours, theirs, oursCPU, theirCPU []float64
	var info chbackup.SetInfo
	var handBytes int64
	for i := range reps {
		if i > 0 {
			time.Sleep(time.Second) // a new set name
		}
		// CPU: this process for ours, its waited-for children (curl, zstd,
		// age, sftp) by hand. ClickHouse and sshd are not children: their
		// CPU counts for neither pipeline.
		start, cpu := time.Now(), harness.SelfCPU()
		info, err = chbackup.Backup(ctx, cfg)
		if err != nil {
			return err
		}
		d := time.Since(start)
		ours = append(ours, float64(info.PlainBytes)/d.Seconds()/1e6)
		oursCPU = append(oursCPU, (harness.SelfCPU() - cpu).Seconds())
		fmt.Fprintf(os.Stderr, "run %d  ours    %6.1f MB/s  (%s, CPU %.2fs, %d blobs, %.1f MiB stored)\n", i+1, ours[i], d.Round(time.Millisecond), oursCPU[i], info.Blobs, float64(info.CipherBytes)/(1<<20))

		start, cpu = time.Now(), harness.RusageCPU(syscall.RUSAGE_CHILDREN)
		handBytes, err = hand.run(ctx, i)
		if err != nil {
			return err
		}
		d = time.Since(start)
		theirs = append(theirs, float64(info.PlainBytes)/d.Seconds()/1e6)
		theirCPU = append(theirCPU, (harness.RusageCPU(syscall.RUSAGE_CHILDREN) - cpu).Seconds())
		fmt.Fprintf(os.Stderr, "run %d  by hand %6.1f MB/s  (%s, CPU %.2fs, %.1f MiB stored)\n", i+1, theirs[i], d.Round(time.Millisecond), theirCPU[i], float64(handBytes)/(1<<20))
	}
	mo, mt := median(ours), median(theirs)
	fmt.Printf("backup of %.1f MiB (Native dump), %d partitions, %d runs each, %d CPUs, ClickHouse %s\n",
		float64(info.PlainBytes)/(1<<20), partitions, reps, runtime.NumCPU(), clickhouseVersion(ctx, cfg))
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("  ours (chbackup.Backup)            %7.1f MB/s  CPU %.2fs  stored %.1f MiB  (max RSS of the bench %d MiB)\n", mo, median(oursCPU), float64(info.CipherBytes)/(1<<20), ru.Maxrss>>10)
	fmt.Printf("  by hand (curl|zstd|age, sftp put) %7.1f MB/s  CPU %.2fs  stored %.1f MiB\n", mt, median(theirCPU), float64(handBytes)/(1<<20))
	verdict := "meets"
	if mo/mt < 0.6 {
		verdict = "MISSES"
	}
	fmt.Printf("  ratio ours/by-hand                %7.2f  (%s the 0.6 target)\n", mo/mt, verdict)
	return nil
}

// fill creates the snapshots table (the real migrations) and inserts
// snapshot-like rows until the table holds mib MiB uncompressed.
func fill(ctx context.Context, cfg chbackup.Config, mib, partitions int) (int64, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{cfg.ClickHouse.Addr},
		Auth:        clickhouse.Auth{Database: "default", Username: cfg.ClickHouse.User, Password: cfg.ClickHouse.Password},
		DialTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Minute,
	})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := migrate.ClickHouse(ctx, conn, db); err != nil {
		return 0, err
	}
	// ~1 KB a row: ids, times, and a JSON payload of varying metrics.
	const batch = 100_000
	insert := fmt.Sprintf(`INSERT INTO %[1]s.snapshots
		SELECT concat('c-', toString(n %% 97)), concat('s-', toString(n %% 1009)),
		       toDateTime('2026-11-01 00:00:00') + (n %% %[2]d) * 86400 + intDiv(n, %[2]d) %% 86400,
		       toDateTime('2026-11-01 00:00:00') + (n %% %[2]d) * 86400 + intDiv(n, %[2]d) %% 86400 + 2,
		       '1.4.2', 90,
		       concat('{"cpu":{"user":', toString(rand(1) %% 10000 / 100), ',"system":', toString(rand(2) %% 3000 / 100),
		              ',"iowait":', toString(rand(3) %% 500 / 100), '},"load":[', toString(rand(4) %% 800 / 100), ',', toString(rand(5) %% 800 / 100), '],',
		              '"mem":{"total":68719476736,"used":', toString(rand64(6) %% 68719476736), ',"cached":', toString(rand64(7) %% 8589934592), '},',
		              '"disks":[', arrayStringConcat(arrayMap(i -> concat('{"dev":"nvme', toString(i), 'n1","read_bytes":', toString(rand64(8 + i) %% 1000000000000),
		                  ',"write_bytes":', toString(rand64(20 + i) %% 1000000000000), ',"smart":{"temp":', toString(30 + rand(40 + i) %% 30),
		                  ',"wear":', toString(rand(50 + i) %% 100), ',"status":"ok"}}'), range(4)), ','),
		              '],"ipmi":{"fans":[', arrayStringConcat(arrayMap(i -> toString(3000 + rand(60 + i) %% 4000), range(6)), ','),
		              '],"psu":"ok","sel":"', if(rand(70) %% 50 = 0, 'Power supply failure detected', ''), '"}}')
		FROM (SELECT number + OFFSET AS n FROM system.numbers LIMIT %[3]d)`,
		db, partitions, batch)
	var offset int64
	for {
		var size uint64
		if err := conn.QueryRow(ctx, "SELECT sum(data_uncompressed_bytes) FROM system.parts WHERE active AND database = ? AND table = 'snapshots'", db).Scan(&size); err != nil {
			return 0, err
		}
		if int64(size) >= int64(mib)<<20 {
			return int64(size), nil
		}
		if err := conn.Exec(ctx, strings.Replace(insert, "OFFSET", strconv.FormatInt(offset, 10), 1)); err != nil {
			return 0, fmt.Errorf("fill: %w", err)
		}
		offset += batch
	}
}

// byHand is the same backup done with curl, zstd, age and sftp.
type byHand struct {
	cfg       chbackup.Config
	srv       *testenv.SFTP
	dir       string
	recipient string
}

// prepare writes the curl headers (so the password is in no command
// line) and the remote directory.
func (h byHand) prepare() error {
	headers := "X-ClickHouse-User: " + h.cfg.ClickHouse.User + "\nX-ClickHouse-Key: " + h.cfg.ClickHouse.Password + "\n"
	if err := os.WriteFile(filepath.Join(h.dir, "curl-headers"), []byte(headers), 0o600); err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(h.srv.Root, "by-hand"), 0o700)
}

func (h byHand) run(ctx context.Context, i int) (int64, error) {
	file := filepath.Join(h.dir, "dump.native.zst.age")
	defer os.Remove(file)
	pipeline := fmt.Sprintf(`set -o pipefail; curl -sS --fail -H @%s --data-binary 'SELECT * FROM %s.snapshots FORMAT Native' %s | zstd -q -c | age -r %s > %s`,
		shellQuote(filepath.Join(h.dir, "curl-headers")), db, shellQuote(h.cfg.HTTPURL), h.recipient, shellQuote(file))
	if out, err := exec.CommandContext(ctx, "bash", "-c", pipeline).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("by hand: dump: %w\n%s", err, out)
	}
	st, err := os.Stat(file)
	if err != nil {
		return 0, err
	}
	batch := filepath.Join(h.dir, "sftp-batch")
	remote := filepath.Join(h.srv.Root, "by-hand", "snapshots-"+strconv.Itoa(i)+".native.zst.age")
	if err := os.WriteFile(batch, []byte("put "+file+" "+remote+"\n"), 0o600); err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, "sftp", "-q", "-b", batch, "-i", h.srv.KeyPath, "-P", strconv.Itoa(h.srv.Port),
		"-o", "UserKnownHostsFile="+h.srv.KnownHosts, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "IdentitiesOnly=yes", h.srv.User+"@127.0.0.1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("by hand: sftp: %w\n%s", err, out)
	}
	if rst, err := os.Stat(remote); err != nil || rst.Size() != st.Size() {
		return 0, fmt.Errorf("by hand: the uploaded file is not complete: %v", err)
	}
	return st.Size(), nil
}

func clickhouseVersion(ctx context.Context, cfg chbackup.Config) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.HTTPURL, strings.NewReader("SELECT version()"))
	if err != nil {
		return "?"
	}
	req.Header.Set("X-ClickHouse-User", cfg.ClickHouse.User)
	req.Header.Set("X-ClickHouse-Key", cfg.ClickHouse.Password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "?"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	return strings.TrimSpace(string(b))
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
