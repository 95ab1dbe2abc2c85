package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/pgtext"
)

// ErrSpoolFull is returned when the spool has reached its size limit.
var ErrSpoolFull = errors.New("audit spool full")

// spool keeps audit rows on local disk, fsynced, while PostgreSQL cannot
// take them: numbered segment files of JSON lines, replayed oldest first.
// The writer appends to the newest segment; the replayer only reads
// segments that were sealed.
type spool struct {
	dir string
	// maxBytes bounds the segments on disk; a reload may change it.
	maxBytes atomic.Int64

	mu sync.Mutex
	// spooling is set while rows go here instead of PostgreSQL. It changes
	// only under mu, together with the segments, so a row can never be
	// appended after the replayer has declared the spool drained.
	spooling bool
	// full is set, under mu and only while spooling, once rows could not
	// be appended (the limit reached, or the disk failing), and cleared
	// when the spool is handed back: requests are refused meanwhile
	// (Writer.Refusing). Set outside mu, it could outlive the hand-back
	// that was to clear it, and refuse every request for good.
	full    atomic.Bool
	cur     *os.File
	curName string
	curRows int
	curSize int64 // bytes of the current segment that are durable
	next    int64 // number of the next segment
	bytes   int64 // on disk, all segments
	// dirSync is syncDir (tests make it fail).
	dirSync func(dir string) error
	// lock holds an exclusive flock on the directory's lock file while the
	// spool is open: two writers in one directory would number segments
	// alike, append to each other's, and each would replay and remove
	// segments the other is still writing, losing rows it had answered.
	lock *os.File
}

// lockName is the spool directory's lock file.
const lockName = ".lock"

// spoolLockWait is how long openSpool waits for a spool another writer
// holds. A reload that moves spool_dir away and back at once finds the
// first config's writer still holding it while the rows of requests under
// way arrive (Writer.Destruct): milliseconds, unless a long request (an
// audit export) is among them, when the reload is refused after the wait
// and can be made again once it is done. Another Caddy on the directory
// holds it for good, and is refused after the wait.
var spoolLockWait = 3 * time.Second

// flockWithin takes an exclusive flock on f, trying again for up to wait
// while another holds it; EWOULDBLOCK once the wait is over.
func flockWithin(f *os.File, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EWOULDBLOCK) || !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openSpool(dir string, maxBytes int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit spool: %w", err)
	}
	if err := flockWithin(lock, spoolLockWait); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("audit spool %s is in use by another writer (another Caddy, or a second spool_dir setting, naming the same directory)", dir)
		}
		return nil, fmt.Errorf("audit spool: lock: %w", err)
	}
	s := &spool{dir: dir, lock: lock, dirSync: syncDir}
	s.maxBytes.Store(maxBytes)
	names, err := s.segments()
	if err != nil {
		lock.Close()
		return nil, err
	}
	for _, n := range names {
		var num int64
		if _, err := fmt.Sscanf(n, "seg-%020d.jsonl", &num); err == nil && num >= s.next {
			s.next = num + 1
		}
		if st, err := os.Stat(filepath.Join(dir, n)); err == nil {
			s.bytes += st.Size()
		}
	}
	return s, nil
}

// segments lists segment files, oldest first.
func (s *spool) segments() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("audit spool: %w", err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "seg-") && strings.HasSuffix(e.Name(), ".jsonl") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// empty reports whether nothing waits in the spool.
func (s *spool) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes == 0
}

// size is the spool's size on disk.
func (s *spool) size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// isSpooling reports whether rows should go to the spool.
func (s *spool) isSpooling() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spooling
}

// startSpooling sends rows to the spool from now on.
func (s *spool) startSpooling() {
	s.mu.Lock()
	s.spooling = true
	s.mu.Unlock()
}

// handBack ends spooling once no sealed segment is left and the one being
// written holds at most maxRows rows, and says whether it did. It holds
// the lock throughout, so no chain appends meanwhile: it seals that
// segment, has replay move its rows to PostgreSQL, removes it, and ends
// spooling. The chains waiting for the lock then find spooling over and
// write to PostgreSQL, after every spooled row. Under steady load a chain
// opens a new segment while the replayer moves the others, so a spool
// that waited for no segment to be open would never hand back; holding
// the chains for one small segment's replay (at most maxRows rows) ends
// it. Nothing is left when no segment is on disk: the directory is read
// again, not the running count of bytes, which a segment removed by hand
// or a failed write cut back only in part would leave wrong for good.
func (s *spool) handBack(maxRows int, replay func(name string) error) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && s.curRows > maxRows {
		return false, nil
	}
	names, err := s.segments()
	if err != nil {
		return false, err
	}
	for _, n := range names {
		if s.cur == nil || n != s.curName {
			return false, nil // a sealed segment is left: replayed first, outside the lock
		}
	}
	if s.cur != nil {
		name := s.curName
		err := s.cur.Close()
		s.cur, s.curName, s.curRows, s.curSize = nil, "", 0, 0
		if err != nil {
			return false, fmt.Errorf("audit spool: %w", err)
		}
		if err := replay(name); err != nil {
			return false, err
		}
		if _, _, err := s.unlink(name); err != nil { // s.bytes is counted again below
			return false, err
		}
	}
	if names, err = s.segments(); err != nil {
		return false, err
	}
	var bytes int64
	for _, n := range names {
		if st, err := os.Stat(filepath.Join(s.dir, n)); err == nil {
			bytes += st.Size()
		}
	}
	s.bytes = bytes
	if len(names) == 0 {
		s.spooling = false
		s.setFull(false)
	}
	return !s.spooling, nil
}

// fullSpools counts the open spools that are full. The spool_full gauge
// is one for the process, and two writers are open at once after a
// reload that moved spool_dir: it says whether any is full, so one
// writer's hand-back or close does not clear another's refusal.
var fullSpools atomic.Int64

// setFull sets s.full, with mu held, and the gauge from fullSpools; it
// reports whether full changed.
func (s *spool) setFull(full bool) bool {
	if s.full.Swap(full) == full {
		return false
	}
	delta := int64(-1)
	if full {
		delta = 1
	}
	metrics.spoolFull.Set(float64(min(fullSpools.Add(delta), 1)))
	return true
}

// markFull records that rows could not be appended, unless the spool was
// handed back meanwhile (then they go to PostgreSQL instead, and nothing
// is refused); it reports whether the spool was not full before.
func (s *spool) markFull() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.spooling {
		return false
	}
	return s.setFull(true)
}

// appendWhileSpooling appends rows if the spool is in use; false means
// spooling ended meanwhile and the rows should go to PostgreSQL.
func (s *spool) appendWhileSpooling(rows []*audit.Row) (bool, error) {
	return s.appendIf(rows, true)
}

// append writes rows to the current segment and fsyncs it: when it
// returns nil, the rows survive a crash.
func (s *spool) append(rows []*audit.Row) error {
	_, err := s.appendIf(rows, false)
	return err
}

func (s *spool) appendIf(rows []*audit.Row, onlyWhileSpooling bool) (bool, error) {
	var buf []byte
	for _, r := range rows {
		b, err := json.Marshal(r)
		if err != nil {
			return true, fmt.Errorf("audit spool: encode: %w", err)
		}
		buf = append(append(buf, b...), '\n')
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if onlyWhileSpooling && !s.spooling {
		return false, nil
	}
	if s.bytes+int64(len(buf)) > s.maxBytes.Load() {
		return true, ErrSpoolFull
	}
	if s.cur == nil {
		s.curName = fmt.Sprintf("seg-%020d.jsonl", s.next)
		s.next++
		f, err := os.OpenFile(filepath.Join(s.dir, s.curName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			s.curName = ""
			return true, fmt.Errorf("audit spool: %w", err)
		}
		// The new segment's name must be durable before any row in it
		// is answered; if it cannot be made so, the segment goes, and the
		// next append makes another (and syncs the directory again).
		if err := s.dirSync(s.dir); err != nil {
			_ = f.Close()
			_ = os.Remove(filepath.Join(s.dir, s.curName))
			s.curName = ""
			return true, err
		}
		s.cur = f
	}
	// A write or fsync that fails (a full disk) may leave part of the
	// batch in the file. Those rows were refused and the chain takes their
	// places again, so they must not stay behind to be replayed: cut the
	// segment back to where it was.
	if _, err := s.cur.Write(buf); err != nil {
		return true, s.undo(fmt.Errorf("audit spool: write: %w", err))
	}
	if err := s.cur.Sync(); err != nil {
		return true, s.undo(fmt.Errorf("audit spool: fsync: %w", err))
	}
	s.curSize += int64(len(buf))
	s.bytes += int64(len(buf))
	s.curRows += len(rows)
	return true, nil
}

// undo cuts the current segment back to its last durable size after a
// failed append and returns err (with the truncation's own failure, which
// shrinking a file practically never has, added to it).
func (s *spool) undo(err error) error {
	terr := s.cur.Truncate(s.curSize)
	if terr == nil {
		terr = s.cur.Sync()
	}
	if terr == nil {
		return err
	}
	// The segment ends in part of a line: later rows must not be appended
	// to it, where the first would join that part and be lost. They go to
	// a new segment.
	_ = s.cur.Close()
	s.cur, s.curName, s.curRows, s.curSize = nil, "", 0, 0
	return fmt.Errorf("%w (and the segment could not be cut back: %v)", err, terr)
}

// seal closes the current segment so the replayer may take it.
func (s *spool) seal() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil
	}
	err := s.cur.Close()
	s.cur, s.curName, s.curRows, s.curSize = nil, "", 0, 0
	return err
}

// sealed lists the segments not being written, oldest first. The
// directory is listed before the current segment's name is read: a chain
// may open a new segment at any moment (only the replayer seals one), and
// one opened after the listing is simply not in it, whereas reading the
// name first could miss a segment opened in between and hand the
// replayer a file a chain is still writing.
func (s *spool) sealed() ([]string, error) {
	names, err := s.segments()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	cur := s.curName
	s.mu.Unlock()
	out := names[:0]
	for _, n := range names {
		if n != cur {
			out = append(out, n)
		}
	}
	return out, nil
}

// maxSpoolLine bounds one spooled row's line; the edge's header limits
// keep real rows far below it.
const maxSpoolLine = 4 << 20

// each reads a segment's rows in order and hands them to fn n at a time,
// so a segment as large as the spool is never held in memory at once. A
// last line cut short by a crash before its fsync is dropped: its request
// never got an answer. A whole line that does not decode, or decodes to a
// row PostgreSQL would refuse (damage on disk: only rows checkRow passed
// are spooled), cannot be replayed either; it is counted in corrupt, and
// the rows after it are read on. Handed on, such a row would fail every
// replay of its segment, and the spool would never empty.
func (s *spool) each(name string, n int, fn func([]*audit.Row) error) (corrupt int, err error) {
	f, err := os.Open(filepath.Join(s.dir, name))
	if err != nil {
		return 0, fmt.Errorf("audit spool: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	rows := make([]*audit.Row, 0, n)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(line) <= maxSpoolLine { // past it, only its end is awaited
				line = append(line, chunk...)
			}
			continue
		}
		if err == nil { // a whole line
			line = append(line, chunk...)
			var r audit.Row
			if len(line) > maxSpoolLine || json.Unmarshal(line, &r) != nil || checkRow(&r) != nil || !pgtext.Valid(r.WriterID) {
				corrupt++
			} else {
				rows = append(rows, &r)
			}
			line = line[:0]
			if len(rows) == n {
				if err := fn(rows); err != nil {
					return corrupt, err
				}
				rows = make([]*audit.Row, 0, n)
			}
			continue
		}
		// The end of the file; what is left of a line was torn.
		if len(rows) > 0 {
			if err := fn(rows); err != nil {
				return corrupt, err
			}
		}
		if errors.Is(err, io.EOF) {
			return corrupt, nil
		}
		return corrupt, fmt.Errorf("audit spool: %w", err)
	}
}

// read returns all of a segment's rows (tests).
func (s *spool) read(name string) ([]*audit.Row, error) {
	var all []*audit.Row
	_, err := s.each(name, 1000, func(rows []*audit.Row) error {
		all = append(all, rows...)
		return nil
	})
	return all, err
}

// remove deletes a replayed segment. The file work is done outside mu,
// which the chains take for every spooled batch.
func (s *spool) remove(name string) error {
	size, removed, err := s.unlink(name)
	if removed {
		s.mu.Lock()
		s.bytes -= size
		s.mu.Unlock()
	}
	return err
}

// unlink deletes segment name and syncs the directory; it returns the
// segment's size and whether it is gone.
func (s *spool) unlink(name string) (int64, bool, error) {
	st, err := os.Stat(filepath.Join(s.dir, name))
	if err != nil {
		return 0, false, fmt.Errorf("audit spool: %w", err)
	}
	if err := os.Remove(filepath.Join(s.dir, name)); err != nil {
		return 0, false, fmt.Errorf("audit spool: %w", err)
	}
	return st.Size(), true, s.dirSync(s.dir)
}

// syncDir fsyncs dir, so that the names in it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit spool: fsync dir: %w", err)
	}
	return nil
}

// close seals the current segment and lets another writer open the
// directory.
func (s *spool) close() error {
	err := s.seal()
	s.mu.Lock()
	defer s.mu.Unlock()
	// Closed, a full spool no longer refuses anything (a reload moved
	// spool_dir away from it).
	s.setFull(false)
	if s.lock != nil {
		err = errors.Join(err, s.lock.Close()) // closing releases the flock
		s.lock = nil
	}
	return err
}
