package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// crucibleSnapshot is shaped like what a Crucible agent sends: about 4 KB
// of nested sections, no server_id.
func crucibleSnapshot(ts time.Time, extra string) string {
	var disks, smart, nics []string
	for i := range 6 {
		n := strconv.Itoa(i)
		disks = append(disks, `{"device":"/dev/nvme`+n+`n1","mount":"/data`+n+`","fs":"ext4","total_gb":1863,"used_gb":1`+n+`2,"used_pct":27.5,"inodes_used_pct":3.1}`)
		smart = append(smart, `{"device":"/dev/nvme`+n+`n1","model":"SAMSUNG MZQL21T9HCJR","serial":"S64GNE0R`+n+`00001","health":"PASSED","temperature_c":41,"power_on_hours":18231,"media_errors":0,"percentage_used":4}`)
		nics = append(nics, `{"interface":"enp`+n+`s0","state":"up","speed_mbps":10000,"rx_bytes":918273645,"tx_bytes":827364512,"rx_errors":0,"tx_errors":0,"rx_dropped":2}`)
	}
	return `{"collector_version":"0.9.4","timestamp":"` + ts.UTC().Format(time.RFC3339Nano) + `",` + extra +
		`"system":{"hostname":"db1","ip":"10.0.0.1","os":"Ubuntu 24.04.4 LTS","kernel":"6.8.0-107-generic","uptime_seconds":604800},` +
		`"cpu":{"model":"AMD EPYC 7443P 24-Core Processor","cores":24,"threads":48,"load1":0.42,"load5":0.38,"load15":0.31,"usage_pct":7.9,"iowait_pct":0.4,"steal_pct":0},` +
		`"memory":{"total_mb":257614,"used_mb":40960,"available_mb":216654,"swap_total_mb":8192,"swap_used_mb":128},` +
		`"disks":[` + strings.Join(disks, ",") + `],"smart":[` + strings.Join(smart, ",") + `],"network":[` + strings.Join(nics, ",") + `],` +
		`"raid":[{"device":"/dev/md0","level":"raid1","state":"clean","devices":2,"failed":0}],` +
		`"ipmi":{"available":true,"sel_entries":3,"sensors":[{"name":"CPU Temp","value":52,"unit":"C","status":"ok"},{"name":"PSU1 Status","value":1,"unit":"","status":"ok"},{"name":"FAN1","value":5400,"unit":"RPM","status":"ok"}]},` +
		`"os_alerts":[],"security":{"pending_updates":4,"security_updates":1,"reboot_required":false,"ssh_password_auth":false},` +
		`"systemd":{"failed_units":[],"units_total":214},"ntp":{"synchronized":true,"offset_ms":0.8},` +
		`"collection_status":{"duration_ms":812,"errors":[]}}`
}

type ingestEdge struct {
	stack *testenv.Stack
	c     *testenv.Customer
	ch    *testenv.CH
	chDir string
}

func newIngestEdge(t *testing.T, privateClickHouse bool) *ingestEdge {
	t.Helper()
	env, c, _ := testenv.EdgeEnv(t)
	e := &ingestEdge{c: c}
	if privateClickHouse {
		chEnv, dir := testenv.Private(t, "clickhouse")
		for _, k := range []string{"GUARDIAN_CLICKHOUSE_ADDR", "GUARDIAN_CLICKHOUSE_USER", "GUARDIAN_CLICKHOUSE_PASSWORD"} {
			env[k] = chEnv[k]
		}
		env["GUARDIAN_CLICKHOUSE_DATABASE"] = "guardian"
		e.chDir = dir
		conn, err := clickhouse.Open(&clickhouse.Options{
			Addr: []string{chEnv["GUARDIAN_CLICKHOUSE_ADDR"]},
			Auth: clickhouse.Auth{Database: "default", Username: chEnv["GUARDIAN_CLICKHOUSE_USER"], Password: chEnv["GUARDIAN_CLICKHOUSE_PASSWORD"]},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if _, err := migrate.ClickHouse(context.Background(), conn, "guardian"); err != nil {
			t.Fatal(err)
		}
		e.ch = &testenv.CH{Database: "guardian", Conn: conn}
	} else {
		e.ch = testenv.ClickHouse(t)
		env["GUARDIAN_CLICKHOUSE_DATABASE"] = e.ch.Database
	}
	e.stack = testenv.StartStack(t, env)
	return e
}

func post(t *testing.T, url, key, body string) (int, http.Header, map[string]any) {
	t.Helper()
	status, h, doc, err := tryPost(url, key, body)
	if err != nil {
		t.Fatal(err)
	}
	return status, h, doc
}

// tryPost is post for goroutines other than the test's, which must not
// call t.Fatal.
func tryPost(url, key, body string) (int, http.Header, map[string]any, error) {
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var doc map[string]any
	_ = json.Unmarshal(b, &doc)
	return resp.StatusCode, resp.Header, doc, nil
}

func TestCollectorSnapshotIsStoredForItsOwnServer(t *testing.T) {
	t.Parallel()
	e := newIngestEdge(t, false)
	key := e.c.CollectorKey(t, e.c.ServerID)
	ts := time.Now().Add(-time.Minute)
	status, _, doc := post(t, e.stack.URL+"/api/v1/ingest", key, crucibleSnapshot(ts, ""))
	if status != 200 || doc["success"] != true || doc["active_alerts"] != float64(0) || doc["received_at"] == nil {
		t.Fatalf("ingest: %d %v", status, doc)
	}
	var server, customer, version string
	var days uint16
	err := e.ch.Conn.QueryRow(context.Background(), "SELECT server_id, customer_id, collector_version, retention_days FROM "+e.ch.Database+".snapshots").Scan(&server, &customer, &version, &days)
	if err != nil || server != e.c.ServerID || customer != e.c.ID || version != "0.9.4" || days != 7 {
		t.Fatalf("stored row: %s %s %s %d (%v)", server, customer, version, days, err)
	}
	// The body's own server_id, when it matches, is fine too.
	if status, _, doc := post(t, e.stack.URL+"/api/v1/ingest", key, crucibleSnapshot(ts, `"server_id":"`+e.c.ServerID+`",`)); status != 200 {
		t.Fatalf("matching server_id: %d %v", status, doc)
	}
	// A UUID is the same whatever the case of its hex digits.
	if status, _, doc := post(t, e.stack.URL+"/api/v1/ingest", key, crucibleSnapshot(ts, `"server_id":"`+strings.ToUpper(e.c.ServerID)+`",`)); status != 200 {
		t.Fatalf("matching server_id in upper case: %d %v", status, doc)
	}
	// An agent whose dashboard URL ends in a slash sends //api/v1/ingest:
	// the edge serves ingest's one path (functions elsewhere answer 404 to
	// a path that is not canonical).
	if status, _, doc := post(t, e.stack.URL+"//api/v1/ingest", key, crucibleSnapshot(ts, "")); status != 200 {
		t.Fatalf("//api/v1/ingest: %d %v", status, doc)
	}
}

func TestConcurrentSnapshotsAreBatchedAndAllStored(t *testing.T) {
	t.Parallel()
	e := newIngestEdge(t, false)
	key := e.c.CollectorKey(t, e.c.ServerID)
	snap := crucibleSnapshot(time.Now().Add(-time.Minute), "")
	if len(snap) < 3000 {
		t.Fatalf("fixture is %d bytes, want about 4 KB", len(snap))
	}
	const n = 60
	type result struct {
		status int
		err    error
	}
	var wg sync.WaitGroup
	results := make(chan result, n)
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _, _, err := tryPost(e.stack.URL+"/api/v1/ingest", key, snap)
			results <- result{status, err}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(results)
	for r := range results {
		if r.err != nil || r.status != 200 {
			t.Fatalf("status %d (%v)", r.status, r.err)
		}
	}
	var rows uint64
	if err := e.ch.Conn.QueryRow(context.Background(), "SELECT count() FROM "+e.ch.Database+".snapshots").Scan(&rows); err != nil || rows != n {
		t.Fatalf("%d rows (%v), want %d", rows, err, n)
	}
	// Each insert is a part with a block number of its own; merging parts
	// keeps the range of blocks they hold, so the active parts' ranges
	// count the inserts whatever ClickHouse merged meanwhile.
	var inserts int64
	if err := e.ch.Conn.QueryRow(context.Background(), "SELECT toInt64(sum(max_block_number - min_block_number + 1)) FROM system.parts WHERE database = ? AND table = 'snapshots' AND active",
		e.ch.Database).Scan(&inserts); err != nil {
		t.Fatal(err)
	}
	// Inserts start at least minInsertInterval apart, however slow the
	// machine, so the requests' span bounds them; it also bounds them
	// below n unless the 60 requests took 15 s.
	if most := 1 + int64(elapsed/minInsertInterval); inserts > most {
		t.Errorf("%d inserts in %v, at most %d with inserts %v apart", inserts, elapsed.Round(time.Millisecond), most, minInsertInterval)
	}
	if inserts >= n {
		t.Errorf("%d concurrent snapshots stored in %d inserts: not batched (requests took %v)", n, inserts, elapsed.Round(time.Millisecond))
	}
	t.Logf("%d concurrent snapshots stored in %d inserts in %v", n, inserts, elapsed.Round(time.Millisecond))
}

func TestIngestRefusals(t *testing.T) {
	t.Parallel()
	e := newIngestEdge(t, false)
	collector := e.c.CollectorKey(t, e.c.ServerID)
	account := e.c.AccountKey(t, "admin")
	now := time.Now()
	cases := []struct {
		name, key, body string
		status          int
		code            string
	}{
		{"collector key for another server's snapshot", collector, crucibleSnapshot(now, `"server_id":"`+e.c.OtherServerID+`",`), 403, "wrong_server"},
		{"account key on the ingest route", account, crucibleSnapshot(now, ""), 403, "insufficient_scope"},
		{"body over 512 KiB", collector, crucibleSnapshot(now, `"pad":"`+strings.Repeat("x", MaxBody)+`",`), 413, "payload_too_large"},
		{"not JSON", collector, "hello", 400, "invalid_snapshot"},
		{"revoked-looking garbage key", "gmk_cru_live_x", crucibleSnapshot(now, ""), 401, "invalid_credentials"},
	}
	for _, tc := range cases {
		status, h, doc := post(t, e.stack.URL+"/api/v1/ingest", tc.key, tc.body)
		if status != tc.status || doc["code"] != tc.code || h.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %v", tc.name, status, doc)
		}
	}
	var n uint64
	if err := e.ch.Conn.QueryRow(context.Background(), "SELECT count() FROM "+e.ch.Database+".snapshots").Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused snapshots were stored: %d (%v)", n, err)
	}
	// An agent's set-up probe (GET with its key) must not read as an
	// authentication failure.
	req, _ := http.NewRequest("GET", e.stack.URL+"/api/v1/ingest", nil)
	req.Header.Set("Authorization", "Bearer "+collector)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET probe: %d", resp.StatusCode)
	}
}

func TestClickHouseDownIs503AndNothingIsHalfWritten(t *testing.T) {
	t.Parallel()
	e := newIngestEdge(t, true)
	key := e.c.CollectorKey(t, e.c.ServerID)
	if status, _, doc := post(t, e.stack.URL+"/api/v1/ingest", key, crucibleSnapshot(time.Now(), "")); status != 200 {
		t.Fatalf("before the outage: %d %v", status, doc)
	}
	if err := testenv.Stop(e.chDir, "clickhouse"); err != nil {
		t.Fatal(err)
	}
	status, h, doc := post(t, e.stack.URL+"/api/v1/ingest", key, crucibleSnapshot(time.Now(), `"marker":"while-down",`))
	if status != 503 || doc["code"] != "storage_unavailable" || h.Get("Retry-After") == "" {
		t.Fatalf("clickhouse down: %d %v", status, doc)
	}
	if _, err := testenv.Start(e.chDir, "clickhouse"); err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := e.ch.Conn.QueryRow(context.Background(), "SELECT count() FROM guardian.snapshots").Scan(&n); err != nil || n != 1 {
		t.Fatalf("after the outage: %d rows (want only the one sent before it), %v", n, err)
	}
	// Back up: the agent's next push is stored.
	if status, _, doc := post(t, e.stack.URL+"/api/v1/ingest", key, crucibleSnapshot(time.Now(), "")); status != 200 {
		t.Fatalf("after restart: %d %v", status, doc)
	}
}

// TestBatcherBoundsAndSpacesInserts drives the batcher against the real
// ClickHouse table: under load no insert holds more rows or payload bytes
// than allowed (a lone larger snapshot goes alone), an insert that is not
// full starts at least the interval after the previous one, an idle
// batcher sends a lone snapshot at once, and every snapshot queued is
// stored exactly once.
func TestBatcherBoundsAndSpacesInserts(t *testing.T) {
	t.Parallel()
	ch := testenv.ClickHouse(t)
	store := &chStore{conn: ch.Conn, table: ch.Database + ".snapshots"}
	type sent struct {
		rows, bytes, first int
		at                 time.Time
	}
	var mu sync.Mutex
	var batches []sent
	record := func(ctx context.Context, rows []*pendingRow) error {
		s := sent{rows: len(rows), first: len(rows[0].row.Payload), at: time.Now()}
		for _, p := range rows {
			s.bytes += len(p.row.Payload)
		}
		mu.Lock()
		batches = append(batches, s)
		mu.Unlock()
		return store.insertBatch(ctx, rows)
	}
	const interval = 100 * time.Millisecond
	b := newBatcher(record, batchLimits{rows: 5, bytes: 10_000, interval: interval})
	defer b.close()

	snap := crucibleSnapshot(time.Now().Add(-time.Minute), "")
	row := func(payload string) snapshotRow {
		now := time.Now().UTC().Truncate(time.Second)
		return snapshotRow{CustomerID: "c", ServerID: "s", TS: now, ReceivedAt: now, CollectorVersion: "0.9.4", RetentionDays: 7, Payload: payload}
	}
	// Idle: one snapshot, one insert of one row.
	if err := b.Insert(context.Background(), row(snap)); err != nil {
		t.Fatal(err)
	}
	// Load: 3 KB+ snapshots (at most 3 fit in 10,000 bytes), a 2-byte one
	// in each group of four (then the row bound of 5 can matter), and one
	// larger than the byte bound.
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := snap
			if i%4 == 0 {
				p = "{}"
			}
			errs <- b.Insert(context.Background(), row(p))
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs <- b.Insert(context.Background(), row("{"+strings.Repeat(" ", 20_000)+"}"))
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	total := 0
	for i, s := range batches {
		total += s.rows
		if s.rows > 5 || (s.bytes > 10_000 && s.rows > 1) {
			t.Errorf("insert %d: %d rows, %d bytes; want at most 5 rows and 10,000 bytes unless alone", i, s.rows, s.bytes)
		}
		// A full insert may go early: at a bound, or the row that came
		// next (the next insert's first) did not fit.
		full := s.rows == 5 || s.bytes >= 10_000 || (i+1 < len(batches) && s.bytes+batches[i+1].first > 10_000)
		// The times are taken inside send, a little after the batcher's
		// own: allow that much scheduling delay.
		if i > 0 && !full && s.at.Sub(batches[i-1].at) < interval*9/10 {
			t.Errorf("insert %d (%d rows, %d bytes) started %v after the previous one; want at least %v", i, s.rows, s.bytes, s.at.Sub(batches[i-1].at), interval)
		}
	}
	if batches[0].rows != 1 {
		t.Errorf("the idle batcher's first insert held %d rows, want 1", batches[0].rows)
	}
	if total != n+2 {
		t.Errorf("%d rows sent in %d inserts, want %d", total, len(batches), n+2)
	}
	var stored uint64
	if err := ch.Conn.QueryRow(context.Background(), "SELECT count() FROM "+ch.Database+".snapshots").Scan(&stored); err != nil || stored != n+2 {
		t.Fatalf("ClickHouse holds %d rows (%v), want %d", stored, err, n+2)
	}
	t.Logf("%d snapshots in %d inserts", total, len(batches))
}

// A snapshot that arrives after the batcher closed (a request still
// reading its body when a shutdown's grace ended) is refused, which the
// handler answers with 503; it does not panic on the closed queue.
func TestInsertAfterCloseIsRefused(t *testing.T) {
	t.Parallel()
	b := newBatcher(func(context.Context, []*pendingRow) error { return nil }, batchLimits{rows: 5, bytes: 10_000, interval: time.Millisecond})
	if err := b.Insert(context.Background(), snapshotRow{Payload: "{}"}); err != nil {
		t.Fatal(err)
	}
	b.close()
	b.close() // twice is harmless
	if err := b.Insert(context.Background(), snapshotRow{Payload: "{}"}); !errors.Is(err, errClosed) {
		t.Fatalf("insert after close: %v, want errClosed", err)
	}
}
