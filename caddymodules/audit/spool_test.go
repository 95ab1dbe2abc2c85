package audit

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
)

// A batch that fills the disk half-way must leave nothing of itself in the
// spool: its requests are refused and the chain gives its places to later
// rows, so replaying its lines would clash with (and, by the unique chain
// index, silently drop) rows that were acknowledged.
func TestFailedAppendOnAFullDiskLeavesNothingBehind(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=16k,mode=0700"); err != nil {
		t.Skipf("cannot mount a 16 KiB tmpfs (%v); needs root", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	s, err := openSpool(dir, 1<<30) // only the disk limits it
	if err != nil {
		t.Fatal(err)
	}
	var stored []*audit.Row
	failed := 0
	for i := 0; failed == 0 && i < 1000; i += 5 {
		batch := []*audit.Row{testRow(i), testRow(i + 1), testRow(i + 2), testRow(i + 3), testRow(i + 4)}
		if err := s.append(batch); err != nil {
			failed++
			continue
		}
		stored = append(stored, batch...)
	}
	if failed == 0 {
		t.Fatal("the disk never filled")
	}
	names := sealAll(t, s)
	var got []*audit.Row
	for _, n := range names {
		rows, err := s.read(n)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, rows...)
	}
	if len(got) != len(stored) {
		t.Fatalf("spool holds %d rows, %d were acknowledged", len(got), len(stored))
	}
	for i := range got {
		if got[i].RequestID != stored[i].RequestID {
			t.Fatalf("row %d is %s, want %s", i, got[i].RequestID, stored[i].RequestID)
		}
	}
	if s.size() == 0 {
		t.Fatal("spool size lost its acknowledged rows")
	}
}

// The replayer lists sealed segments while chains open new ones; every
// acknowledged row must be read exactly once, none from a segment still
// being written.
func TestReplayNeverTakesTheSegmentBeingWritten(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	const writers, perWriter = 4, 300
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if err := s.append([]*audit.Row{testRow(w*perWriter + i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[string]int{}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	drain := func() {
		names := sealAll(t, s)
		for _, n := range names {
			rows, err := s.read(n)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				seen[r.RequestID]++
			}
			if err := s.remove(n); err != nil {
				t.Fatal(err)
			}
		}
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		drain()
	}
	drain()
	if len(seen) != writers*perWriter {
		t.Fatalf("replayed %d distinct rows of %d", len(seen), writers*perWriter)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("row %s replayed %d times", id, n)
		}
	}
	if s.size() != 0 {
		t.Fatalf("spool size %d after replaying everything", s.size())
	}
}

// Two writers must never share a spool directory: each would replay and
// remove segments the other is still writing. The second open is refused
// until the first spool is closed; one that comes while the first closes
// (a reload back to a spool_dir whose writer drains) waits for it.
func TestSpoolDirectoryHasOneWriter(t *testing.T) {
	defer func(w time.Duration) { spoolLockWait = w }(spoolLockWait)
	spoolLockWait = 200 * time.Millisecond
	dir := t.TempDir()
	first, err := openSpool(dir, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.append([]*audit.Row{testRow(1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := openSpool(dir, 1<<30); err == nil || !strings.Contains(err.Error(), "in use by another writer") {
		t.Fatalf("second open of a spool in use: %v", err)
	}
	if err := first.close(); err != nil {
		t.Fatal(err)
	}
	again, err := openSpool(dir, 1<<30)
	if err != nil {
		t.Fatalf("open after the first closed: %v", err)
	}
	defer again.close()
	names, err := again.sealed()
	if err != nil || len(names) != 1 {
		t.Fatalf("the first writer's segment: %v %v", names, err)
	}
	if err := again.close(); err != nil {
		t.Fatal(err)
	}

	// Closed while the next open waits: it gets the spool.
	spoolLockWait = 10 * time.Second
	first, err = openSpool(dir, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		_ = first.close()
	}()
	next, err := openSpool(dir, 1<<30)
	if err != nil {
		t.Fatalf("an open while the holder closed: %v", err)
	}
	if err := next.close(); err != nil {
		t.Fatal(err)
	}
}

// A segment is read in bounded batches. A torn last line (a crash before
// its fsync) is dropped quietly; whole lines that do not decode, overlong
// ones included, or that decode to a row PostgreSQL would refuse (a bit
// flipped in an action, or a NUL in a writer id), are counted as
// damaged, and the rows after them are still read.
func TestSpoolSegmentReadsInBatchesAndCountsDamage(t *testing.T) {
	dir := t.TempDir()
	s, err := openSpool(dir, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	line := func(r *audit.Row) string {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return string(b) + "\n"
	}
	a, b, c := testRow(1), testRow(2), testRow(3)
	flipped := func(edit func(*audit.Row)) string {
		r := testRow(9)
		edit(r)
		return line(r)
	}
	body := line(a) + "{\"Path\":\"/damaged\n" + line(b) + strings.Repeat("x", maxSpoolLine+100) + "\n" +
		"{}\n" + flipped(func(r *audit.Row) { r.Action = "reae" }) + flipped(func(r *audit.Row) { r.WriterID = "w\x00" }) +
		line(c) + line(testRow(4))[:40]
	if err := os.WriteFile(filepath.Join(dir, "seg-00000000000000000099.jsonl"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var sizes []int
	var got []string
	corrupt, err := s.each("seg-00000000000000000099.jsonl", 2, func(rows []*audit.Row) error {
		sizes = append(sizes, len(rows))
		for _, r := range rows {
			got = append(got, r.RequestID)
		}
		return nil
	})
	if err != nil || corrupt != 5 {
		t.Fatalf("corrupt %d (%v), want 5", corrupt, err)
	}
	if !slices.Equal(got, []string{a.RequestID, b.RequestID, c.RequestID}) || !slices.Equal(sizes, []int{2, 1}) {
		t.Fatalf("rows %v in batches %v", got, sizes)
	}
}

// A failed append whose segment cannot be cut back leaves part of a line
// at the segment's end: the next rows must go to a new segment, not after
// that part, where the first of them would be joined to it and lost.
// /dev/full stands in for the segment: writes fail (ENOSPC) and so does
// truncating it (EINVAL).
func TestAppendAfterAFailedCutGoesToANewSegment(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	r1, r2, r4 := testRow(1), testRow(2), testRow(4)
	if err := s.append([]*audit.Row{r1, r2}); err != nil {
		t.Fatal(err)
	}
	first := s.curName
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	if err := s.cur.Close(); err != nil {
		t.Fatal(err)
	}
	s.cur = full
	err = s.append([]*audit.Row{testRow(3)})
	if err == nil || !strings.Contains(err.Error(), "could not be cut back") {
		t.Fatalf("append to a full, uncuttable segment: %v", err)
	}
	if s.cur != nil {
		t.Fatal("the segment that could not be cut back is still the one written")
	}
	if err := s.append([]*audit.Row{r4}); err != nil {
		t.Fatal(err)
	}
	if s.curName == first || s.curName == "" {
		t.Fatalf("rows after the failure went to %q, the first segment was %q", s.curName, first)
	}
	names := sealAll(t, s)
	var got []string
	for _, n := range names {
		rows, err := s.read(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			got = append(got, r.RequestID)
		}
	}
	want := []string{r1.RequestID, r2.RequestID, r4.RequestID}
	if !slices.Equal(got, want) {
		t.Fatalf("spool holds %v, want %v", got, want)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
}

// A reload's max_spool_bytes applies to the writer it shares (one
// spool_dir), not only the first config's.
func TestSpoolBoundFollowsTheNewestSetting(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	full := func() bool {
		for i := range 100 {
			if err := s.append([]*audit.Row{testRow(i)}); err != nil {
				if !errors.Is(err, ErrSpoolFull) {
					t.Fatal(err)
				}
				return true
			}
		}
		return false
	}
	if !full() {
		t.Fatal("a 1 KiB spool took 100 rows")
	}
	w := &Writer{spool: s}
	w.SetMaxSpool(1 << 20)
	if full() {
		t.Fatal("still full after the bound was raised to 1 MiB")
	}
	w.SetMaxSpool(0)
	if got := s.maxBytes.Load(); got != DefaultMaxSpool {
		t.Fatalf("bound %d after SetMaxSpool(0), want the default", got)
	}
}

// A config provisioned and then rejected (another module failed) gives
// the writer it shares back the running config's settings in its
// Cleanup, instead of leaving its own in force.
func TestARejectedConfigsSettingsDoNotStay(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	w := &Writer{spool: s}
	running := w.Hold(Settings{Linger: 3 * time.Millisecond, MaxSpool: 1 << 30})
	rejected := w.Hold(Settings{Linger: time.Second, MaxSpool: 10 << 20})
	if s.maxBytes.Load() != 10<<20 || w.linger.Load() != int64(time.Second) {
		t.Fatalf("the newest config's settings not applied: %d, %d", s.maxBytes.Load(), w.linger.Load())
	}
	rejected()
	rejected() // Cleanup may run twice
	if s.maxBytes.Load() != 1<<30 || w.linger.Load() != int64(3*time.Millisecond) {
		t.Fatalf("after the rejected config's cleanup: %d, %d, want the running config's", s.maxBytes.Load(), w.linger.Load())
	}
	// A reload that succeeds: the old config's cleanup leaves the new one's.
	next := w.Hold(Settings{Linger: 2 * time.Millisecond, MaxSpool: 5 << 20})
	running()
	if s.maxBytes.Load() != 5<<20 || w.linger.Load() != int64(2*time.Millisecond) {
		t.Fatalf("after the old config's cleanup: %d, %d, want the new config's", s.maxBytes.Load(), w.linger.Load())
	}
	next()
}

// Under steady load (chains spooling a batch every millisecond while the
// replayer moves the segments) the spool is still handed back: the last
// small segment is replayed under the spool's lock, and the chains then
// write directly, after every spooled row, none twice or lost. Before,
// the hand-back waited for a moment with no segment open, which steady
// load never gave, and spooling went on with PostgreSQL back.
func TestTheSpoolIsHandedBackUnderSteadyLoad(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	s.startSpooling()
	var direct atomic.Int64
	var mu sync.Mutex // guards spooled and replayed, never held around the spool's own lock
	spooled := map[string]bool{}
	var replayed []string // request ids, in replay order
	replay := func(name string) error {
		_, err := s.each(name, 100, func(rows []*audit.Row) error {
			if direct.Load() > 0 {
				return errors.New("a spooled row replayed after a direct one was written")
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range rows {
				replayed = append(replayed, r.RequestID)
			}
			return nil
		})
		return err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				r := testRow(i)
				ok, err := s.appendWhileSpooling([]*audit.Row{r})
				switch {
				case err != nil:
					t.Error(err)
				case ok:
					mu.Lock()
					spooled[r.RequestID] = true
					mu.Unlock()
				default:
					direct.Add(1)
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond) // PostgreSQL away a while: rows wait in the spool
	handed := false
	for deadline := time.Now().Add(20 * time.Second); !handed && time.Now().Before(deadline); {
		names := sealAll(t, s)
		for _, n := range names {
			if err := replay(n); err != nil {
				t.Fatal(err)
			}
			if err := s.remove(n); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // a replay takes time; chains keep spooling
		}
		if handed, err = s.handBack(1000, replay); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond) // some rows written directly
	close(stop)
	wg.Wait()
	if !handed {
		t.Fatalf("never handed back under steady load (%d rows spooled)", len(spooled))
	}
	seen := map[string]bool{}
	for _, id := range replayed {
		if seen[id] || !spooled[id] {
			t.Fatalf("row %s replayed twice, or never spooled", id)
		}
		seen[id] = true
	}
	if len(spooled) < 100 || len(seen) != len(spooled) || direct.Load() == 0 || s.isSpooling() || s.size() != 0 {
		t.Fatalf("replayed %d of %d spooled rows, %d direct after, spooling %v, %d bytes left",
			len(seen), len(spooled), direct.Load(), s.isSpooling(), s.size())
	}
}

// A spool marked full refuses requests (Writer.Refusing) until it is
// handed back; marked after the hand-back (a chain whose append failed
// just before it), it refuses nothing, instead of refusing for good.
func TestAFullSpoolIsClearedByItsHandBack(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	s.startSpooling()
	if _, err := s.appendWhileSpooling([]*audit.Row{testRow(1)}); !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("append to a spool of 1 byte: %v", err)
	}
	if !s.markFull() || !s.full.Load() || s.markFull() {
		t.Fatal("a full spool not marked full once")
	}
	nothing := func(string) error { return nil }
	if handed, err := s.handBack(1000, nothing); err != nil || !handed || s.full.Load() {
		t.Fatalf("hand-back of an empty spool: %v %v, still full %v", handed, err, s.full.Load())
	}
	if s.markFull() || s.full.Load() {
		t.Fatal("a spool handed back was marked full after it: every request would be refused for good")
	}
}

// A new segment whose name could not be made durable (the directory's
// fsync failed) takes no row: its append fails, and the next one makes a
// segment of its own and syncs the directory again, so no answered row
// sits in a file a crash could unlink.
func TestASegmentWhoseNameIsNotDurableTakesNoRow(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	syncs := 0
	s.dirSync = func(dir string) error {
		syncs++
		if syncs == 1 {
			return errors.New("fsync dir: input/output error")
		}
		return syncDir(dir)
	}
	if err := s.append([]*audit.Row{testRow(1)}); err == nil {
		t.Fatal("an append into a segment whose name is not durable succeeded")
	}
	if err := s.append([]*audit.Row{testRow(2)}); err != nil || syncs != 2 {
		t.Fatalf("the next append: %v, after %d directory syncs (want 2)", err, syncs)
	}
	names := sealAll(t, s)
	if len(names) != 1 {
		t.Fatalf("segments %v, want the second append's alone", names)
	}
	if rows, err := s.read(names[0]); err != nil || len(rows) != 1 || rows[0].Metadata != `{"n":2}` {
		t.Fatalf("segment holds %v (%v), want the second row alone", rows, err)
	}
}

// A hand-back whose replay fails (PostgreSQL stopped answering while the
// chains waited) leaves spooling on and the segment sealed on disk, for
// the next pass to replay; nothing is lost.
func TestAFailedHandBackKeepsItsSegment(t *testing.T) {
	s, err := openSpool(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	s.startSpooling()
	if err := s.append([]*audit.Row{testRow(1), testRow(2)}); err != nil {
		t.Fatal(err)
	}
	away := errors.New("PostgreSQL stopped answering")
	if handed, err := s.handBack(1000, func(string) error { return away }); handed || !errors.Is(err, away) || !s.isSpooling() {
		t.Fatalf("a failed hand-back: %v %v, spooling %v", handed, err, s.isSpooling())
	}
	names, err := s.sealed()
	if err != nil || len(names) != 1 {
		t.Fatalf("segments after a failed hand-back: %v (%v)", names, err)
	}
	if rows, err := s.read(names[0]); err != nil || len(rows) != 2 {
		t.Fatalf("the segment holds %d rows (%v), want 2", len(rows), err)
	}
	if handed, err := s.handBack(1000, func(string) error { return nil }); handed || err != nil {
		t.Fatalf("a hand-back with a sealed segment left: %v %v, want it left to the replay", handed, err)
	}
}

// A replay that PostgreSQL does not answer within its deadline (a hung
// host, or slower than the hand-back's wait) is PostgreSQL away, as a
// ping's timeout is: not a failure that loses rows, which pages.
func TestASilentReplayIsPostgresAway(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never answered
		}
	}()
	pool, err := pgxpool.New(context.Background(), "postgres://guardian:x@"+ln.Addr().String()+"/guardian")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s, err := openSpool(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.append([]*audit.Row{testRow(1)}); err != nil {
		t.Fatal(err)
	}
	names := sealAll(t, s)
	if len(names) != 1 {
		t.Fatalf("segments %v", names)
	}
	w := &Writer{db: pool, spool: s, maxBatch: 10, log: zap.NewNop()}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := w.replaySegment(ctx, names[0]); !errors.Is(err, errAway) {
		t.Fatalf("a replay PostgreSQL did not answer: %v, want it taken for PostgreSQL away", err)
	}
}

// sealAll seals s's current segment and lists the sealed ones.
func sealAll(t testing.TB, s *spool) []string {
	t.Helper()
	if err := s.seal(); err != nil {
		t.Fatal(err)
	}
	names, err := s.sealed()
	if err != nil {
		t.Fatal(err)
	}
	return names
}
