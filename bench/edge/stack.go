package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/glassmkr/guardian/shared/apikey"
)

// stack is the private PostgreSQL, Redis and ClickHouse of one run,
// started by deploy/stack/servers.sh in dir.
type stack struct {
	modDir string
	dir    string
	mode   string // GUARDIAN_STACK_MODE for servers.sh ("" or "test")
	// redisSocket: Caddy reaches Redis through its unix socket.
	redisSocket bool
	env         map[string]string
	super       *pgx.Conn // superuser on the guardian database (statistics, row counts)
	rdb         *redis.Client
	// PGStats says where the PostgreSQL per-request figures come from.
	pgStats string
}

// servers runs deploy/stack/servers.sh verb dir services..., its output
// on our stderr.
func (s *stack) servers(ctx context.Context, verb string, services ...string) error {
	args := append([]string{verb, s.dir}, services...)
	cmd := exec.CommandContext(ctx, filepath.Join(s.modDir, "deploy/stack/servers.sh"), args...)
	cmd.Dir = s.modDir
	cmd.Env = append(os.Environ(), "GUARDIAN_STACK_MODE="+s.mode)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("servers.sh %s %s: %w", verb, strings.Join(services, " "), err)
	}
	return nil
}

// destroy stops the servers and removes their data, whatever the context.
func (s *stack) destroy() error {
	if s.super != nil {
		s.super.Close(context.Background())
		s.super = nil
	}
	if s.rdb != nil {
		s.rdb.Close()
		s.rdb = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return s.servers(ctx, "destroy")
}

// start starts the three servers, turns pg_stat_statements on (a preload
// library: PostgreSQL restarts once), applies the migrations, stops
// ClickHouse (only the migrations need it; it would add noise) and opens
// the statistics connections.
func (s *stack) start(ctx context.Context) error {
	if err := s.servers(ctx, "start"); err != nil {
		return err
	}
	if err := s.readEnv(); err != nil {
		return err
	}
	if err := s.enableStatements(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "pg_stat_statements unavailable (%v): PostgreSQL figures fall back to pg_stat_database.xact_commit\n", err)
		s.pgStats = "pg_stat_database.xact_commit"
	} else {
		s.pgStats = "pg_stat_statements"
	}
	if err := s.migrate(ctx); err != nil {
		return err
	}
	if err := s.servers(ctx, "stop", "clickhouse"); err != nil {
		return err
	}
	var err error
	if s.super, err = s.superConn(ctx, "guardian"); err != nil {
		return err
	}
	if s.pgStats == "pg_stat_statements" {
		if _, err := s.super.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
			return fmt.Errorf("create extension pg_stat_statements: %w", err)
		}
	}
	addr := s.env["GUARDIAN_REDIS_ADDR"]
	if s.redisSocket {
		addr = s.env["GUARDIAN_REDIS_SOCKET"] // the idle PING goes the limiter's way
	}
	s.rdb = redis.NewClient(&redis.Options{Addr: addr, Password: s.env["GUARDIAN_REDIS_PASSWORD"], PoolSize: 1})
	return s.rdb.Ping(ctx).Err()
}

func (s *stack) readEnv() error {
	f, err := os.Open(filepath.Join(s.dir, "servers.env"))
	if err != nil {
		return err
	}
	defer f.Close()
	s.env = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && !strings.HasPrefix(k, "#") {
			s.env[strings.TrimSpace(k)] = v
		}
	}
	need := []string{"GUARDIAN_PG_DSN", "GUARDIAN_PG_APP_DSN", "GUARDIAN_PG_SOCKET_DIR", "PG_PORT", "GUARDIAN_REDIS_ADDR", "GUARDIAN_REDIS_PASSWORD"}
	if s.redisSocket {
		need = append(need, "GUARDIAN_REDIS_SOCKET")
	}
	for _, k := range need {
		if s.env[k] == "" {
			return fmt.Errorf("servers.env lacks %s", k)
		}
	}
	return sc.Err()
}

// superConn connects as the postgres superuser over the unix socket
// (servers.sh sets local trust) to db.
func (s *stack) superConn(ctx context.Context, db string) (*pgx.Conn, error) {
	dsn := fmt.Sprintf("host=%s port=%s user=postgres dbname=%s sslmode=disable", s.env["GUARDIAN_PG_SOCKET_DIR"], s.env["PG_PORT"], db)
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres superuser connection: %w", err)
	}
	return c, nil
}

func (s *stack) enableStatements(ctx context.Context) error {
	c, err := s.superConn(ctx, "postgres")
	if err != nil {
		return err
	}
	_, err = c.Exec(ctx, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
	c.Close(ctx)
	if err != nil {
		return err
	}
	if err := s.servers(ctx, "stop", "postgres"); err != nil {
		return err
	}
	if err := s.servers(ctx, "start", "postgres"); err != nil {
		return err
	}
	return s.readEnv()
}

// migrate runs `go run ./cmd/guardianctl migrate` against the servers.
func (s *stack) migrate(ctx context.Context) error {
	fmt.Fprintln(os.Stderr, "go run ./cmd/guardianctl migrate ...")
	cmd := exec.CommandContext(ctx, "go", "run", "./cmd/guardianctl", "migrate")
	cmd.Dir = s.modDir
	cmd.Env = os.Environ()
	for k, v := range s.env {
		if k == "GUARDIAN_PG_DSN" || strings.HasPrefix(k, "GUARDIAN_CLICKHOUSE_") {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("guardianctl migrate: %w\n%s", err, out)
	}
	return nil
}

// secret returns n random bytes as hex (2n characters).
func secret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// accountKey creates a customer and an account key with scope read (as
// shared/testenv/fixture.go does) and returns the key.
func (s *stack) accountKey(ctx context.Context, pepper string) (string, error) {
	c, err := pgx.Connect(ctx, s.env["GUARDIAN_PG_DSN"])
	if err != nil {
		return "", fmt.Errorf("owner connection: %w", err)
	}
	defer c.Close(ctx)
	var customer string
	if err := c.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('Bench') RETURNING id").Scan(&customer); err != nil {
		return "", fmt.Errorf("customer: %w", err)
	}
	key, err := apikey.Generate(apikey.Account)
	if err != nil {
		return "", err
	}
	h := apikey.Hash([]byte(pepper), key)
	if _, err := c.Exec(ctx, `INSERT INTO api_keys (customer_id, kind, scope, server_id, name, key_hash, last4) VALUES ($1, $2, $3, $4, 'bench', $5, $6)`,
		customer, apikey.Account.String(), "read", nil, h[:], key[len(key)-4:]); err != nil {
		return "", fmt.Errorf("api key: %w", err)
	}
	return key, nil
}

// counters are the servers' cumulative figures at one moment.
type counters struct {
	redisCmds  float64 // every command but our own INFO, those run inside Lua scripts included
	redisReads float64 // read events (round trips) but our own INFO's
	redisEval  float64 // EVALSHA + EVAL (the limiter's script)
	redisByCmd map[string]float64
	pgStmts    float64 // statements of the runtime role (or transactions, see pgStats)
	pgCopies   float64 // COPY statements of the runtime role (audit batches)
	auditRows  int64
	redisPid   int
	postmaster int
}

func (s *stack) read(ctx context.Context) (counters, error) {
	c := counters{redisByCmd: map[string]float64{}}
	info, err := s.rdb.Info(ctx, "stats", "commandstats").Result()
	if err != nil {
		return c, fmt.Errorf("redis INFO: %w", err)
	}
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && name == "total_reads_processed" {
			c.redisReads, _ = strconv.ParseFloat(rest, 64)
		}
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls := 0.0
		for field := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(field, "calls="); ok {
				calls, _ = strconv.ParseFloat(v, 64)
			}
		}
		cmd := strings.TrimPrefix(name, "cmdstat_")
		if cmd != "info" {
			c.redisByCmd[cmd] = calls
		}
		switch cmd {
		case "info":
			// Our own: each INFO is one read event too.
			c.redisReads -= calls
		case "evalsha", "eval":
			c.redisEval += calls
			c.redisCmds += calls
		default:
			c.redisCmds += calls
		}
	}
	if s.pgStats == "pg_stat_statements" {
		err = s.super.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::float8,
			coalesce(sum(calls) FILTER (WHERE s.query ILIKE 'copy%'), 0)::float8
			FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = 'guardian_app'`).Scan(&c.pgStmts, &c.pgCopies)
	} else {
		err = s.super.QueryRow(ctx, `SELECT xact_commit::float8 FROM pg_stat_database WHERE datname = 'guardian'`).Scan(&c.pgStmts)
	}
	if err == nil {
		err = s.super.QueryRow(ctx, "SELECT count(*) FROM api_audit_log").Scan(&c.auditRows)
	}
	if err != nil {
		return c, fmt.Errorf("postgres statistics: %w", err)
	}
	c.redisPid = pidFile(filepath.Join(s.dir, "redis", "redis.pid"))
	c.postmaster = pidFile(filepath.Join(s.env["GUARDIAN_PG_SOCKET_DIR"], "data", "postmaster.pid"))
	return c, nil
}

// versions returns the servers' versions, for the report.
func (s *stack) versions(ctx context.Context) (pg, rd string) {
	_ = s.super.QueryRow(ctx, "SHOW server_version").Scan(&pg)
	if info, err := s.rdb.Info(ctx, "server").Result(); err == nil {
		for line := range strings.Lines(info) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				rd = v
			}
		}
	}
	return pg, rd
}

// pingP50 is the median of n PINGs to Redis, one at a time, in
// microseconds: the loopback round trip on this machine, the floor under
// what the limiter can add to a request's latency.
func (s *stack) pingP50(ctx context.Context, n int) (float64, error) {
	took := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if err := s.rdb.Ping(ctx).Err(); err != nil {
			return 0, fmt.Errorf("redis PING: %w", err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	return float64(took[n/2].Nanoseconds()) / 1000, nil
}

// pidFile reads the pid on the first line of path, or 0.
func pidFile(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}
