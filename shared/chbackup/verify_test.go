package chbackup

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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/job"
)

// chProxy stands between a verification and ClickHouse: it records every
// statement, and answer may answer one instead of ClickHouse (a newer
// server's system tables) or look at ClickHouse before it runs.
type chProxy struct {
	url    string
	mu     sync.Mutex
	seen   []string
	answer func(q string) (string, bool)
}

func newCHProxy(t *testing.T, upstream string, answer func(q string) (string, bool)) *chProxy {
	t.Helper()
	p := &chProxy{answer: answer}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body io.Reader = r.Body
		q := r.URL.Query().Get("query")
		if q == "" { // the statement is the body
			b, _ := io.ReadAll(r.Body)
			q, body = string(b), bytes.NewReader(b)
		}
		p.mu.Lock()
		p.seen = append(p.seen, q)
		p.mu.Unlock()
		if p.answer != nil {
			if a, ok := p.answer(q); ok {
				io.WriteString(w, a)
				return
			}
		}
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, strings.TrimSuffix(upstream, "/")+r.URL.RequestURI(), body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

// statements returns the statements seen that start with prefix.
func (p *chProxy) statements(prefix string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, q := range p.seen {
		if strings.HasPrefix(q, prefix) {
			out = append(out, q)
		}
	}
	return out
}

// tableCreates are the CREATE TABLE statements that went through p but
// the turn's mark (waitTurn): the scratch tables.
func (p *chProxy) tableCreates() []string {
	var out []string
	for _, q := range p.statements("CREATE TABLE ") {
		if !strings.Contains(q, loadingMark) {
			out = append(out, q)
		}
	}
	return out
}

// insertDatabase is the database an INSERT statement loads into.
func insertDatabase(q string) string {
	rest, _ := strings.CutPrefix(q, "INSERT INTO `")
	db, _, _ := strings.Cut(rest, "`")
	return db
}

// The scratch copy holds one table at a time: each is dropped once
// checked, before the next is created, so that it never needs room for a
// second copy of the whole database.
func TestVerifyLoadsOneTableAtATime(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	f.backup(t)
	var mu sync.Mutex
	most := uint64(0)
	p := newCHProxy(t, f.cfg.HTTPURL, func(q string) (string, bool) {
		if strings.HasPrefix(q, "INSERT INTO ") {
			n := f.count(t, "system.tables WHERE database = "+quoteString(insertDatabase(q))+" AND name != "+quoteString(loadingMark))
			mu.Lock()
			most = max(most, n)
			mu.Unlock()
		}
		return "", false
	})
	cfg := f.cfg
	cfg.HTTPURL = p.url
	before := scratchDatabases(t, f)
	rep, err := VerifyLatest(context.Background(), cfg, f.id)
	if err != nil || len(rep.Targets) != 1 || rep.Targets[0].Tables < 3 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	if most != 1 {
		t.Errorf("the scratch database held %d tables at once, want 1", most)
	}
	if drops := p.statements("DROP TABLE "); len(drops) != rep.Targets[0].Tables {
		t.Errorf("%d tables dropped one by one, %d checked: %q", len(drops), rep.Targets[0].Tables, drops)
	}
	// ClickHouse 18.16 cannot tell its free space (neither system.disks
	// nor filesystemAvailable): loaded unchecked.
	if rep.Targets[0].SpaceChecked != 0 {
		t.Errorf("space checked for %d tables on a server that cannot tell its free space", rep.Targets[0].SpaceChecked)
	}
	if after := scratchDatabases(t, f); after != before {
		t.Errorf("scratch databases: %d before, %d after", before, after)
	}
}

// Where ClickHouse reports its disks (system.disks, tables' data_paths: a
// newer server, answered here by the proxy), or the free space of its data
// path (filesystemAvailable: 19.1 to 19.14, answered by the proxy too), a table
// whose copy would not leave the disk a reserve is not loaded, and the run
// fails without being red (the backup was not checked, not found
// wanting); with room, every table is checked and loaded. A copy's size is
// estimated from the live table's parts, not from the set's uncompressed
// size, which JSON payloads overstate severalfold.
func TestVerifyChecksTheDisksHaveRoom(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	info := f.backup(t)
	var largest uint64 // the set's largest table, uncompressed
	for _, tm := range f.manifest(t, 0, info.Name).Tables {
		var plain uint64
		for _, b := range tm.Blobs {
			plain += uint64(b.PlainBytes)
		}
		largest = max(largest, plain)
	}
	if largest < 10000 {
		t.Fatalf("the largest table has %d bytes", largest)
	}
	const gib = 1 << 30
	for _, c := range []struct {
		name        string
		free, total uint64
		// parts answers system.parts for the live table: its size on disk.
		parts   string
		refused bool
		// dataPath: the server has no system.disks (the real 18.16's
		// answer), and the proxy answers for filesystemAvailable.
		dataPath bool
	}{
		{"a nearly full disk", 3 * gib, 100 * gib, "", true, false}, // 5 GiB must stay free
		{"room", 1 << 40, 2 << 40, "", false, false},
		{"a nearly full data path", 3 * gib, 100 * gib, "", true, true},
		{"room on the data path", 1 << 40, 2 << 40, "", false, true},
		// The live tables take a thousandth of a byte a row; 1 GiB must
		// stay free, and the rest holds half the largest table's
		// uncompressed size.
		{"room for its parts, not for its uncompressed size", gib + largest/2, 2 * gib, `{"B":"1000","R":"1000000","N":"3"}`, false, false},
		{"no room for its parts", gib + 999, 2 * gib, `{"B":"1000","R":"1","N":"1"}`, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newCHProxy(t, f.cfg.HTTPURL, func(q string) (string, bool) {
				switch {
				case c.dataPath && strings.Contains(q, "FROM system.functions"):
					return `{"N":"2"}` + "\n", true
				case c.dataPath && strings.Contains(q, "filesystemAvailable()"):
					return fmt.Sprintf(`{"Free":"%d","Total":"%d"}`+"\n", c.free, c.total), true
				case c.dataPath:
				case strings.Contains(q, "FROM system.columns") && strings.Contains(q, "data_paths"):
					return `{"N":"4"}` + "\n", true
				case strings.Contains(q, "arrayJoin(data_paths)"):
					return `{"P":"/var/lib/clickhouse/store/0ab/0abcdef0-1234-4567-89ab-0123456789ab/"}` + "\n", true
				case strings.Contains(q, "FROM system.disks"):
					return fmt.Sprintf(`{"Name":"default","Path":"/var/lib/clickhouse/","Free":"%d","Total":"%d"}`+"\n", c.free, c.total), true
				case strings.Contains(q, "FROM system.parts") && c.parts != "":
					return c.parts + "\n", true
				}
				return "", false
			})
			cfg := f.cfg
			cfg.HTTPURL = p.url
			before := scratchDatabases(t, f)
			rep, err := VerifyLatest(context.Background(), cfg, f.id)
			if len(rep.Targets) != 1 {
				t.Fatalf("report: %+v", rep)
			}
			tv := rep.Targets[0]
			if c.refused {
				if err == nil || errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "not loaded") || !strings.Contains(err.Error(), "must stay free") {
					t.Fatalf("verify: %v, want an error, not red: no room", err)
				}
				if ins := p.statements("INSERT INTO "); len(ins) != 0 {
					t.Errorf("%d blobs loaded onto a full disk", len(ins))
				}
			} else if err != nil || tv.SpaceChecked != tv.Tables || tv.Tables < 3 {
				t.Fatalf("verify: %+v, %v", tv, err)
			}
			if after := scratchDatabases(t, f); after != before {
				t.Errorf("scratch databases: %d before, %d after", before, after)
			}
		})
	}
}

// A set taken on a server with TTL holds tables whose statements carry a
// table TTL (shared/migrate's EnsureTTL gives them one). The scratch
// tables get none: TTL merges would delete the expired rows the set holds
// while they are counted.
func TestVerifyCreatesScratchTablesWithoutTheirTTL(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	info := f.backup(t)
	m := f.manifest(t, 0, info.Name)
	for i, tm := range m.Tables {
		if tm.Name == "snapshots" {
			head, tail, ok := strings.Cut(tm.Create, " SETTINGS ")
			if !ok {
				t.Fatalf("no SETTINGS in %q", tm.Create)
			}
			m.Tables[i].Create = head + " TTL ts + toIntervalDay(retention_days) SETTINGS " + tail
		}
	}
	writeManifest(t, f, m)
	p := newCHProxy(t, f.cfg.HTTPURL, nil)
	cfg := f.cfg
	cfg.HTTPURL = p.url
	rep, err := VerifyLatest(context.Background(), cfg, f.id)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if rep.Targets[0].Rows != info.Rows {
		t.Errorf("%d rows verified, the set has %d", rep.Targets[0].Rows, info.Rows)
	}
	creates := p.tableCreates()
	if len(creates) != len(m.Tables) {
		t.Fatalf("%d tables created, the set has %d", len(creates), len(m.Tables))
	}
	for _, q := range creates {
		if strings.Contains(q, "TTL") {
			t.Errorf("a scratch table with a TTL: %s", q)
		}
	}
}

func writeManifest(t *testing.T, f *fixture, m Manifest) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.root[0], m.Set, manifestName), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Verifications of one database may overlap (restore-verify and
// backup-clickhouse take different locks): a run leaves alone the scratch
// database of a run whose deadline has not passed, drops one whose has,
// and names its own with its deadline.
func TestVerifyDropsOnlyScratchNoRunCanBeUsing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	f.backup(t)
	db := f.cfg.ClickHouse.Database
	live := scratchName(db, time.Now().Add(time.Hour), [6]byte{1})
	dead := scratchName(db, time.Now().Add(-scratchGrace-time.Minute), [6]byte{2})
	for _, d := range []string{live, dead} {
		f.exec(t, "CREATE DATABASE "+d)
		f.exec(t, "CREATE TABLE "+d+".t (x UInt8) ENGINE = Memory")
	}
	t.Cleanup(func() { _ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+live) })

	p := newCHProxy(t, f.cfg.HTTPURL, nil)
	cfg := f.cfg
	cfg.HTTPURL = p.url
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deadline, _ := ctx.Deadline()
	if _, err := VerifyLatest(ctx, cfg, f.id); err != nil {
		t.Fatal(err)
	}
	if n := f.count(t, "system.databases WHERE name = '"+live+"'"); n != 1 {
		t.Error("a live run's scratch database was dropped")
	}
	if n := f.count(t, "system.databases WHERE name = '"+dead+"'"); n != 0 {
		t.Error("the scratch database of a run past its deadline is still there")
	}
	created := p.statements("CREATE DATABASE ")
	if len(created) != 1 {
		t.Fatalf("created %q", created)
	}
	own := strings.Trim(strings.TrimPrefix(created[0], "CREATE DATABASE "), "`")
	if scratchExpired(db, own, deadline) || !scratchExpired(db, own, deadline.Add(scratchGrace+time.Second)) {
		t.Errorf("the run's scratch database %s does not carry its deadline %s", own, deadline)
	}
}

// Verifications of one database take turns loading: each checks the
// disks' room for its own copy only, so a run waits while another is
// loading (its scratch database holds the mark), whatever their deadlines,
// and gives up, an error and not red, if its own time runs out first. A
// scratch database without the mark (a run not loading yet, or waiting)
// holds nobody back.
func TestVerificationsTakeTurns(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	f.backup(t)
	db := f.cfg.ClickHouse.Database
	// Another run, loading: its deadline is later than this run's first
	// attempt's, and not past.
	other := scratchName(db, time.Now().Add(time.Hour), [6]byte{9})
	idle := scratchName(db, time.Now().Add(time.Minute), [6]byte{8})
	f.exec(t, "CREATE DATABASE "+other)
	f.exec(t, "CREATE DATABASE "+idle)
	f.exec(t, "CREATE TABLE "+other+"."+loadingMark+" ENGINE = Memory AS SELECT now() AS at")
	t.Cleanup(func() {
		_ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+other)
		_ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+idle)
	})

	p := newCHProxy(t, f.cfg.HTTPURL, nil)
	cfg := f.cfg
	cfg.HTTPURL = p.url
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	_, err := VerifyLatest(ctx, cfg, f.id)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "waited for its turn") || errors.Is(err, job.ErrRed) {
		t.Fatalf("a run whose turn never came: %v, want an error (not red) that it waited", err)
	}
	if loaded := p.tableCreates(); len(loaded) != 0 {
		t.Fatalf("a run waiting for its turn created %q", loaded)
	}

	// Its turn comes once the other has stopped loading.
	done := make(chan error, 1)
	go func() {
		_, err := VerifyLatest(context.Background(), cfg, f.id)
		done <- err
	}()
	time.Sleep(3 * turnPoll)
	if loaded := p.tableCreates(); len(loaded) != 0 {
		t.Fatalf("a run waiting for its turn created %q", loaded)
	}
	f.exec(t, "DROP TABLE "+other+"."+loadingMark)
	if err := <-done; err != nil {
		t.Fatalf("once the other run stopped loading: %v", err)
	}
	if loaded := p.tableCreates(); len(loaded) == 0 {
		t.Fatal("the run loaded nothing")
	}
}

// Two runs that take their turn at the same moment both see the other's
// mark: the one that goes after the other yields.
func TestRunsTakingTheirTurnAtOnceYieldByOrder(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 0)
	db := f.cfg.ClickHouse.Database
	first := scratchName(db, time.Now().Add(time.Hour), [6]byte{1})
	second := scratchName(db, time.Now().Add(2*time.Hour), [6]byte{2})
	for _, d := range []string{first, second} {
		f.exec(t, "CREATE DATABASE "+d)
		t.Cleanup(func() { _ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+d) })
	}
	// first holds its mark, as if it had made it a moment before second
	// looked: second, going after it, must yield, not load beside it.
	f.exec(t, "CREATE TABLE "+first+"."+loadingMark+" ENGINE = Memory AS SELECT now() AS at")
	if ahead, err := loadingOther(context.Background(), f.ch, db, second, second); err != nil || ahead != first {
		t.Fatalf("second looking again after its mark: %q %v, want %s ahead", ahead, err, first)
	}
	if ahead, err := loadingOther(context.Background(), f.ch, db, first, first); err != nil || ahead != "" {
		t.Fatalf("first looking again after its mark: %q %v, want nobody ahead", ahead, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*turnPoll)
	defer cancel()
	if stop, err := waitTurn(ctx, f.ch, db, second); err == nil {
		stop()
		t.Fatal("second took a turn while first was loading")
	}
	if n := f.count(t, "system.tables WHERE database = "+quoteString(second)+" AND name = "+quoteString(loadingMark)); n != 0 {
		t.Fatal("second kept its mark while waiting")
	}
	stop, err := waitTurn(context.Background(), f.ch, db, first)
	stop()
	if err != nil {
		t.Fatalf("first, loading, looking again: %v", err)
	}
}

// A killed run's mark holds nobody back once it is stale: a run loading
// renews its mark every markBeat, and one not renewed for markStale is
// passed by although its deadline is hours away. A mark of unknown form
// still counts.
func TestAStaleMarkHoldsNobodyBack(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 0)
	db := f.cfg.ClickHouse.Database
	killed := scratchName(db, time.Now().Add(6*time.Hour), [6]byte{1})
	odd := scratchName(db, time.Now().Add(6*time.Hour), [6]byte{2})
	own := scratchName(db, time.Now().Add(7*time.Hour), [6]byte{3})
	for _, d := range []string{killed, odd, own} {
		f.exec(t, "CREATE DATABASE "+d)
		t.Cleanup(func() { _ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+d) })
	}
	ctx := context.Background()
	// made ages a mark's table (its metadata file, whose time ClickHouse
	// reports as the mark's making: the test's server is local).
	made := func(name string, ago time.Duration) {
		t.Helper()
		m, err := one[struct{ P string }](ctx, f.ch, "SELECT metadata_path AS P FROM system.tables WHERE database = "+quoteString(name)+" AND name = "+quoteString(loadingMark))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(m.P, time.Now().Add(-ago), time.Now().Add(-ago)); err != nil {
			t.Fatal(err)
		}
	}
	// A mark just made, before its first row: it counts.
	f.exec(t, "CREATE TABLE "+killed+"."+loadingMark+" (at DateTime) ENGINE = Memory")
	if ahead, err := loadingOther(ctx, f.ch, db, own, ""); err != nil || ahead != killed {
		t.Fatalf("a mark just made, empty: %q ahead (%v), want %s", ahead, err, killed)
	}
	// Made and last renewed longer ago than markStale: it does not.
	stale := fmt.Sprintf("now() - %d", int(markStale/time.Second)+5)
	f.exec(t, "INSERT INTO "+killed+"."+loadingMark+" SELECT "+stale)
	made(killed, markStale+10*time.Second)
	if ahead, err := loadingOther(ctx, f.ch, db, own, ""); err != nil || ahead != "" {
		t.Fatalf("a stale mark: %q ahead (%v), want nobody", ahead, err)
	}
	// Renewed, it counts again.
	f.exec(t, "INSERT INTO "+killed+"."+loadingMark+" SELECT now()")
	if ahead, err := loadingOther(ctx, f.ch, db, own, ""); err != nil || ahead != killed {
		t.Fatalf("a renewed mark: %q ahead (%v), want %s", ahead, err, killed)
	}
	f.exec(t, "DROP TABLE "+killed+"."+loadingMark)
	f.exec(t, "CREATE TABLE "+odd+"."+loadingMark+" (x UInt8) ENGINE = Memory")
	if ahead, err := loadingOther(ctx, f.ch, db, own, ""); err != nil || ahead != odd {
		t.Fatalf("a mark without times: %q ahead (%v), want %s", ahead, err, odd)
	}
	f.exec(t, "DROP TABLE "+odd+"."+loadingMark)

	// The run that takes its turn renews its mark until stopped.
	stop, err := waitTurn(ctx, f.ch, db, own)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	beats := func() uint64 { return f.count(t, own+"."+loadingMark) }
	if n := beats(); n != 1 {
		t.Fatalf("%d rows in a new mark, want 1", n)
	}
	stop = keepMark(ctx, f.ch, own, 50*time.Millisecond)
	for deadline := time.Now().Add(10 * time.Second); beats() < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("the mark was renewed %d times in 10 s, every 50 ms asked", beats()-1)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	n := beats()
	time.Sleep(200 * time.Millisecond)
	if beats() != n {
		t.Fatal("the mark was renewed after stop")
	}
}

func TestScratchBefore(t *testing.T) {
	t.Parallel()
	db := "guardian"
	now := time.Unix(1_800_000_000, 0)
	early, late := scratchName(db, now, [6]byte{5}), scratchName(db, now.Add(time.Second), [6]byte{1})
	tie := scratchName(db, now, [6]byte{6})
	if !scratchBefore(db, early, late) || scratchBefore(db, late, early) {
		t.Error("the earlier deadline goes first")
	}
	if !scratchBefore(db, early, tie) || scratchBefore(db, tie, early) {
		t.Error("at one deadline, the lower random part goes first")
	}
	if scratchBefore(db, early, early) {
		t.Error("a name goes before itself")
	}
}

func TestScratchExpired(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	db := "guardian"
	p := scratchPrefix(db)
	for _, c := range []struct {
		name string
		want bool
	}{
		{scratchName(db, now.Add(time.Minute), [6]byte{}), false},
		{scratchName(db, now.Add(-time.Minute), [6]byte{}), false}, // within the grace
		{scratchName(db, now.Add(-scratchGrace-time.Second), [6]byte{}), true},
		{p + "0123456789ab", true},                                    // an earlier version's
		{"restore_verify_0123456789ab", true},                         // an even earlier one's
		{scratchPrefix("other") + "1700000000_0123456789ab", false},   // another database's
		{p + "1700000000_0123456789ab_x", false},                      // not a form this package makes
		{p + "99999999999999999999_0123456789ab", false},              // out of range
		{"restore_verify_" + "0123456789ab_0123456789ab", false},      // not db's
		{scratchName("other", now.Add(-time.Hour), [6]byte{}), false}, // another database's
	} {
		if got := scratchExpired(db, c.name, now); got != c.want {
			t.Errorf("scratchExpired(%q) = %v, want %v", c.name, got, c.want)
		}
	}
	// The name never promises an earlier end than the deadline.
	d := now.Add(1500 * time.Millisecond)
	if n := scratchName(db, d, [6]byte{}); scratchExpired(db, n, d.Add(scratchGrace)) {
		t.Errorf("%s expires before %s", n, d.Add(scratchGrace))
	}
}

func TestDropNow(t *testing.T) {
	t.Parallel()
	s := scratchDB{name: "restore_verify_x"}
	for engine, want := range map[string]string{
		"Ordinary":   "DROP TABLE IF EXISTS `restore_verify_x`.`t`",
		"Atomic":     "DROP TABLE IF EXISTS `restore_verify_x`.`t` NO DELAY",
		"Replicated": "DROP TABLE IF EXISTS `restore_verify_x`.`t` NO DELAY",
	} {
		s.engine = engine
		if got := s.dropTable("t"); got != want {
			t.Errorf("%s: %q, want %q", engine, got, want)
		}
	}
	s.engine = "Atomic"
	if got := s.dropDatabase(); got != "DROP DATABASE IF EXISTS `restore_verify_x` NO DELAY" {
		t.Errorf("drop database: %q", got)
	}
}

func TestDisksOfAndCheckRoom(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	disks := []diskSpace{
		{Name: "default", Path: "/var/lib/clickhouse/", Free: 50 * gib, Total: 100 * gib},
		{Name: "fast", Path: "/mnt/fast/clickhouse/", Free: 2 * gib, Total: 10 * gib},
		{Name: "fastest", Path: "/mnt/fast/", Free: 1, Total: 1},
		{Name: "s3", Path: "/var/lib/clickhouse/disks/s3/", Free: 1<<64 - 1, Total: 1<<64 - 1},
	}
	for _, c := range []struct {
		paths []string
		want  string
	}{
		{[]string{"/var/lib/clickhouse/store/0ab/0abc/"}, "default"},
		{[]string{"/mnt/fast/clickhouse/data/db/t/", "/var/lib/clickhouse/data/db/t/"}, "fast,default"},
		{[]string{"/var/lib/clickhouse/disks/s3/store/x/"}, "s3"},
		{[]string{"/mnt/fast/x/"}, "fastest"},
		{[]string{"/srv/elsewhere/"}, ""},
		{[]string{"/var/lib/clickhouse-other/x/"}, ""},
		{nil, ""},
	} {
		got, ok := disksOf(c.paths, disks)
		var names []string
		for _, d := range got {
			names = append(names, d.Name)
		}
		if strings.Join(names, ",") != c.want || ok != (c.want != "") {
			t.Errorf("disksOf(%q) = %v, %v; want %q", c.paths, names, ok, c.want)
		}
	}

	for _, c := range []struct {
		name    string
		need    uint64
		disks   []diskSpace
		refused bool
	}{
		{"room to spare", 10 * gib, disks[:1], false},
		{"would leave less than a twentieth", 42 * gib, disks[:1], true},
		{"leaves exactly a twentieth", 40 * gib, []diskSpace{{Name: "d", Free: 49 * gib, Total: 100 * gib}}, false},
		{"a small disk keeps 1 GiB", gib, disks[1:2], true},
		{"a small disk with room", gib / 4, disks[1:2], false},
		{"an empty table on a full disk", 0, []diskSpace{{Name: "d", Free: gib / 2, Total: 8 * gib}}, true},
		{"two disks together", 42 * gib, disks[:2], false},
		{"a remote disk without bounds", 1 << 50, disks[3:], false},
	} {
		err := checkRoom("snapshots", c.need, "the live table's size on disk", c.disks)
		if c.refused != (err != nil) || err != nil && (errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "table snapshots: not loaded") ||
			!strings.Contains(err.Error(), "(from the live table's size on disk)")) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// The reviewer's host: 350 GiB free of 1000, a table of 100 GiB on disk
// whose JSON payloads make 700 GiB uncompressed and 70 GiB in zstd. Its
// copy is estimated from the live table where there is one, else from the
// set's compressed size, and never above its uncompressed size.
func TestScratchSize(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	blobs := func(plain, cipher int64, rows uint64) TableManifest {
		// Two partitions, the size split between them.
		return TableManifest{Name: "snapshots", Blobs: []Blob{
			{PlainBytes: plain / 2, CipherBytes: cipher / 2, Rows: rows / 2},
			{PlainBytes: plain - plain/2, CipherBytes: cipher - cipher/2, Rows: rows - rows/2},
		}}
	}
	big := blobs(700*gib, 70*gib, 1e9)
	for _, c := range []struct {
		name  string
		tm    TableManifest
		live  partsSize
		want  uint64
		basis string
	}{
		{"the live table, as many rows", big, partsSize{100 * gib, 1e9, true}, 200 * gib, "twice the live table's size on disk for the set's rows (merges)"},
		{"the live table, half the set's rows", big, partsSize{50 * gib, 5e8, true}, 200 * gib, "twice the live table's size on disk for the set's rows (merges)"},
		{"the live table, more rows than the set", big, partsSize{150 * gib, 15e8, true}, 200 * gib, "twice the live table's size on disk for the set's rows (merges)"},
		{"the live table counts no rows", big, partsSize{100 * gib, 0, true}, 200 * gib, "twice the live table's size on disk (merges)"},
		{"no live table", big, partsSize{}, 210 * gib, "the set's compressed size"},
		{"an empty live table", big, partsSize{0, 0, false}, 210 * gib, "the set's compressed size"},
		{"incompressible data", blobs(10*gib, 10*gib+1000, 1e6), partsSize{}, 10 * gib, "the set's uncompressed size"},
		{"an empty set", blobs(0, 200, 0), partsSize{100 * gib, 1e9, true}, 0, "twice the live table's size on disk for the set's rows (merges)"},
		{"no overflow", blobs(1<<62, 1<<62, 1<<63), partsSize{1 << 63, 1, true}, 1 << 62, "the set's uncompressed size"},
	} {
		need, basis := scratchSize(c.tm, c.live)
		if need != c.want || basis != c.basis {
			t.Errorf("%s: %d bytes from %s, want %d from %s", c.name, need, basis, c.want, c.basis)
		}
	}

	disk := []diskSpace{{Name: "default", Path: "/var/lib/clickhouse/", Free: 350 * gib, Total: 1000 * gib}}
	need, basis := scratchSize(big, partsSize{100 * gib, 1e9, true})
	if err := checkRoom("snapshots", need, basis, disk); err != nil {
		t.Errorf("a 100 GiB table on a disk with 350 GiB free: %v", err)
	}
	need, basis = scratchSize(big, partsSize{})
	if err := checkRoom("snapshots", need, basis, disk); err != nil {
		t.Errorf("a set of 70 GiB on a disk with 350 GiB free: %v", err)
	}
	disk[0].Free = 250 * gib
	if err := checkRoom("snapshots", need, basis, disk); err == nil || errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "(from the set's compressed size)") {
		t.Errorf("a set of 70 GiB on a disk with 250 GiB free: %v", err)
	}
}

// liveTableSize reads a table's active parts from system.parts (18.16
// has it too); a table without parts, or none, tells nothing.
func TestLiveTableSize(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 0)
	db := f.cfg.ClickHouse.Database
	for _, c := range []struct {
		table string
		rows  uint64
		ok    bool
	}{
		{"snapshots", 1000, true},
		{"alert_history", 25, true},
		{"analyses", 0, false},
		{"no_such_table", 0, false},
	} {
		got, err := liveTableSize(context.Background(), f.ch, db, c.table)
		if err != nil || got.ok != c.ok || got.rows != c.rows || got.ok != (got.bytes > 0) {
			t.Errorf("%s: %+v, %v; want %d rows", c.table, got, err, c.rows)
		}
	}
}

// A verification tells ScratchNote its scratch database's name before
// creating it and "" once it is dropped; a note that fails stops it
// before anything is created. DropScratch drops a noted database and
// refuses any name that is not a scratch database's.
func TestVerifyNotesItsScratchDatabase(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	f.backup(t)
	db := f.cfg.ClickHouse.Database
	p := newCHProxy(t, f.cfg.HTTPURL, nil)
	cfg := f.cfg
	cfg.HTTPURL = p.url
	var notes []string
	cfg.ScratchNote = func(name string, dropped bool) error {
		notes = append(notes, fmt.Sprintf("%s %v", name, dropped))
		// Before it is created, and after it is dropped: never while it is there.
		if f.count(t, "system.databases WHERE name = '"+name+"'") != 0 {
			t.Errorf("told of %s (dropped %v) while it exists", name, dropped)
		}
		return nil
	}
	if _, err := VerifyLatest(context.Background(), cfg, f.id); err != nil {
		t.Fatal(err)
	}
	created := p.statements("CREATE DATABASE ")
	if len(created) != 1 {
		t.Fatalf("created %q, want one scratch database", created)
	}
	name := strings.Trim(strings.TrimPrefix(created[0], "CREATE DATABASE "), "`")
	if len(created) != 1 || len(notes) != 2 || notes[0] != name+" false" || notes[1] != name+" true" || !IsScratchOf(db, name) {
		t.Fatalf("notes %q for %q, want the scratch database's name, created then dropped", notes, created)
	}

	cfg.ScratchNote = func(string, bool) error { return errors.New("disk full") }
	if _, err := VerifyLatest(context.Background(), cfg, f.id); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("a note that failed: %v", err)
	}
	if again := p.statements("CREATE DATABASE "); len(again) != 1 {
		t.Fatalf("a scratch database was created although its note failed: %q", again)
	}

	left := scratchName(db, time.Now().Add(time.Hour), [6]byte{7})
	f.exec(t, "CREATE DATABASE "+left)
	if err := DropScratch(context.Background(), f.cfg, left); err != nil {
		t.Fatal(err)
	}
	if n := f.count(t, "system.databases WHERE name = '"+left+"'"); n != 0 {
		t.Fatal("DropScratch left the noted database")
	}
	if err := DropScratch(context.Background(), f.cfg, left); err != nil {
		t.Fatalf("a noted database already gone: %v", err)
	}
	for _, name := range []string{db, "system", "restore_verify_" + left[len("restore_verify_"):len(left)-1], left + "x", "`" + left + "`"} {
		if err := DropScratch(context.Background(), f.cfg, name); err == nil {
			t.Errorf("DropScratch(%q) was not refused", name)
		}
	}
	if n := f.count(t, "system.databases WHERE name = '"+db+"'"); n != 1 {
		t.Fatal("the live database is gone")
	}
}
