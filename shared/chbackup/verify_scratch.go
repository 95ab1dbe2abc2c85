package chbackup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// A scratch database is named restore_verify_<tag of the database>_<the
// run's deadline, Unix seconds>_<random>. Verifications of one database
// may run at once (restore-verify, backup-clickhouse with an identity, and
// `backup-clickhouse verify` take different locks, on different hosts
// even), so a run drops only the scratch databases whose deadline has
// passed: their run has stopped by then.
const (
	// scratchGrace is how long after its deadline a run's scratch database
	// may still be in use: the run drops it then, within a minute, and
	// hosts' clocks may differ a little.
	scratchGrace = 5 * time.Minute
	// maxVerifyRun bounds a verification whose context has no deadline, so
	// that its scratch database has one.
	maxVerifyRun = 24 * time.Hour
)

var (
	scratchCurrent = regexp.MustCompile(`^([0-9]{1,18})_[0-9a-f]{12}$`)
	// Forms earlier versions made, without a deadline.
	scratchTagged  = regexp.MustCompile(`^[0-9a-f]{12}$`)
	scratchUnnamed = regexp.MustCompile(`^restore_verify_[0-9a-f]{12}$`)
)

// scratchPrefix names the scratch databases of verifications of db.
func scratchPrefix(db string) string {
	sum := sha256.Sum256([]byte(db))
	return "restore_verify_" + hex.EncodeToString(sum[:4]) + "_"
}

// scratchName names the scratch database of a verification of db that
// stops by deadline.
func scratchName(db string, deadline time.Time, random [6]byte) string {
	// Rounded up: the name must not promise an earlier end.
	end := deadline.Add(time.Second - 1).Unix()
	return scratchPrefix(db) + strconv.FormatInt(end, 10) + "_" + hex.EncodeToString(random[:])
}

// scratchExpired reports whether name is a scratch database of db that no
// verification going on at now can be using. Those of the forms earlier
// versions made, without a deadline, are: this version makes none, and
// only an earlier version's run still going across an upgrade could own one.
func scratchExpired(db, name string, now time.Time) bool {
	if name == db {
		return false // the live database, however it is named
	}
	if scratchUnnamed.MatchString(name) {
		return true
	}
	rest, ok := strings.CutPrefix(name, scratchPrefix(db))
	if !ok {
		return false
	}
	if scratchTagged.MatchString(rest) {
		return true
	}
	m := scratchCurrent.FindStringSubmatch(rest)
	if m == nil {
		return false
	}
	end, err := strconv.ParseInt(m[1], 10, 64)
	return err == nil && now.After(time.Unix(end, 0).Add(scratchGrace))
}

// dropScratch drops the scratch databases of db that killed verifications
// left and no live one can be using (scratchExpired).
func dropScratch(ctx context.Context, ch *chClient, db string, now time.Time) error {
	left, err := rows[struct{ Name string }](ctx, ch, "SELECT name AS Name FROM system.databases WHERE startsWith(name, "+
		quoteString(scratchPrefix(db))+") OR match(name, '^restore_verify_[0-9a-f]{12}$')")
	if err != nil {
		return fmt.Errorf("list leftover scratch databases: %w", err)
	}
	for _, d := range left {
		if !scratchExpired(db, d.Name, now) {
			continue
		}
		if err := ch.exec(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(d.Name)); err != nil {
			return fmt.Errorf("drop leftover scratch database %s: %w", d.Name, err)
		}
	}
	return nil
}

// turnPoll is how often a verification waiting for its turn (waitTurn)
// looks again.
const turnPoll = 2 * time.Second

// loadingMark is the table a run keeps in its scratch database while it
// loads (waitTurn): no manifest's table is named so. It holds the times
// the run renewed it (column at).
const loadingMark = "guardian_verify_loading"

// A loading run renews its mark every markBeat (keepMark); a mark not
// renewed for markStale is a killed run's, and holds nobody back.
const (
	markBeat  = 20 * time.Second
	markStale = 2 * time.Minute
)

// waitTurn makes the run whose scratch database is own the only one of
// db's verifications loading, and waits until it is. Verifications of one
// database may overlap, and each checks the disks' room for its own copy
// only: two loading at once could together fill the live database's
// disk. A run loads only while its scratch database holds loadingMark,
// which it makes once no other holds one, and keeps until the database
// is dropped. Two that make theirs at the same moment both look again;
// the one that goes after the other (the later deadline, then the higher
// random part) drops its mark and waits. A run that holds its mark never
// waits, so none waits for ever on another. The run holding its turn
// renews its mark every markBeat until stop is called (before its
// database is dropped); a mark not renewed for markStale, a killed run's,
// or one past its deadline counts no more (restore-verify cleanup drops a
// killed run's database at once). Waiting until ctx ends is an error,
// not red: the backup was not checked.
func waitTurn(ctx context.Context, ch *chClient, db, own string) (stop func(), err error) {
	for {
		ahead, err := takeTurn(ctx, ch, db, own)
		switch {
		case ctx.Err() != nil:
			return func() {}, fmt.Errorf("another verification of %s is loading into %s; this run waited for its turn until its time was up: %w", db, ahead, ctx.Err())
		case err != nil:
			return func() {}, fmt.Errorf("take a turn to load: %w", err)
		case ahead == "":
			return keepMark(ctx, ch, own, markBeat), nil
		}
		t := time.NewTimer(turnPoll)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// takeTurn makes own's mark if no other run is loading, and keeps it if
// none that goes before own made one at the same moment; else it returns
// the run ahead, own without its mark.
func takeTurn(ctx context.Context, ch *chClient, db, own string) (ahead string, err error) {
	if ahead, err = loadingOther(ctx, ch, db, own, ""); err != nil || ahead != "" {
		return ahead, err
	}
	mark := quoteIdent(own) + "." + quoteIdent(loadingMark)
	if err = ch.exec(ctx, "CREATE TABLE IF NOT EXISTS "+mark+" ENGINE = Memory AS SELECT now() AS at"); err != nil {
		return "", err
	}
	if ahead, err = loadingOther(ctx, ch, db, own, own); err != nil || ahead == "" {
		return ahead, err
	}
	return ahead, ch.exec(ctx, "DROP TABLE IF EXISTS "+mark)
}

// keepMark renews own's mark every beat (markBeat) until the returned
// stop is called. A renewal that fails (ClickHouse away for a moment) is tried
// again at the next beat; the run's own work finds ClickHouse away too.
func keepMark(ctx context.Context, ch *chClient, own string, beat time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(beat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				// Bounded: one renewal hung would hold back the next ones.
				bctx, cancel := context.WithTimeout(ctx, beat)
				_ = ch.exec(bctx, "INSERT INTO "+quoteIdent(own)+"."+quoteIdent(loadingMark)+" SELECT now()")
				cancel()
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// markFresh reports whether name's mark was made (made, its
// metadata_modification_time as Unix seconds) or renewed within
// markStale, by ClickHouse's clock. Made counts because CREATE … AS
// SELECT shows the table before its first row, and a ClickHouse restart
// empties it. A mark it cannot read (one of another version, without at;
// dropped since it was listed) counts as fresh: the caller looks again a
// turnPoll later.
func markFresh(ctx context.Context, ch *chClient, name string, made int64) bool {
	r, err := one[struct{ Age string }](ctx, ch, "SELECT toString(toInt64(now()) - greatest(toInt64(max(at)), toInt64("+
		strconv.FormatInt(made, 10)+"))) AS Age FROM "+quoteIdent(name)+"."+quoteIdent(loadingMark))
	if err != nil {
		return true
	}
	age, err := strconv.ParseInt(r.Age, 10, 64)
	return err != nil || age < int64(markStale/time.Second)
}

// loadingOther returns the name of another unexpired scratch database of
// db than own that holds a fresh loadingMark (markFresh), or "". With
// before set (own's name), only one that goes before it counts.
func loadingOther(ctx context.Context, ch *chClient, db, own, before string) (string, error) {
	names, err := rows[struct{ Name, Made string }](ctx, ch, "SELECT database AS Name, toString(toInt64(metadata_modification_time)) AS Made"+
		" FROM system.tables WHERE name = "+quoteString(loadingMark)+" AND startsWith(database, "+quoteString(scratchPrefix(db))+")")
	if err != nil {
		return "", fmt.Errorf("list the verifications loading: %w", err)
	}
	now := time.Now()
	for _, n := range names {
		if n.Name == own || !IsScratchOf(db, n.Name) || scratchExpired(db, n.Name, now) {
			continue
		}
		made, err := strconv.ParseInt(n.Made, 10, 64)
		if err != nil {
			made = now.Unix() // unreadable: fresh, as markFresh would have it
		}
		if (before == "" || scratchBefore(db, n.Name, before)) && markFresh(ctx, ch, n.Name, made) {
			return n.Name, nil
		}
	}
	return "", nil
}

// scratchBefore reports whether scratch database a of db goes before b
// when both runs took their turn at once: the earlier deadline, then the
// lower random part. Both are of the form
// IsScratchOf accepts.
func scratchBefore(db, a, b string) bool {
	ma := scratchCurrent.FindStringSubmatch(strings.TrimPrefix(a, scratchPrefix(db)))
	mb := scratchCurrent.FindStringSubmatch(strings.TrimPrefix(b, scratchPrefix(db)))
	if ma == nil || mb == nil {
		return false
	}
	ea, _ := strconv.ParseInt(ma[1], 10, 64)
	eb, _ := strconv.ParseInt(mb[1], 10, 64)
	if ea != eb {
		return ea < eb
	}
	return a < b
}

// IsScratchOf reports whether name is a scratch database of a
// verification of db, of the form this version makes.
func IsScratchOf(db, name string) bool {
	rest, ok := strings.CutPrefix(name, scratchPrefix(db))
	return ok && name != db && scratchCurrent.MatchString(rest)
}

// DropScratch drops name, the scratch database of a verification of cfg's
// database that was killed before it dropped its own (Config.ScratchNote),
// if it is still there. Any other name is refused: a note must never lead
// to dropping the live database.
func DropScratch(ctx context.Context, cfg Config, name string) error {
	if !IsScratchOf(cfg.ClickHouse.Database, name) {
		return fmt.Errorf("%q is not a scratch database of %s", name, cfg.ClickHouse.Database)
	}
	if err := newCHClient(cfg).exec(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(name)); err != nil {
		return fmt.Errorf("drop the scratch database %s: %w", name, err)
	}
	return nil
}

// scratchDB is a run's scratch database.
type scratchDB struct {
	name string
	// engine is the database's engine: an Atomic one keeps a dropped
	// table's files for minutes unless told otherwise.
	engine string
}

// createScratch creates the scratch database of a verification of db that
// stops by deadline, telling note (if set) its name first. A note's
// refusal returns a scratchDB without a name: nothing was created.
func createScratch(ctx context.Context, ch *chClient, db string, deadline time.Time, note func(string, bool) error) (scratchDB, error) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	s := scratchDB{name: scratchName(db, deadline, rnd)}
	if note != nil {
		if err := note(s.name, false); err != nil {
			return scratchDB{}, fmt.Errorf("note the scratch database's name: %w", err)
		}
	}
	if err := ch.exec(ctx, "CREATE DATABASE "+quoteIdent(s.name)); err != nil {
		return s, fmt.Errorf("create the scratch database: %w", err)
	}
	e, err := one[struct{ Engine string }](ctx, ch, "SELECT engine AS Engine FROM system.databases WHERE name = "+quoteString(s.name))
	if err != nil {
		return s, fmt.Errorf("read the scratch database's engine: %w", err)
	}
	s.engine = e.Engine
	return s, nil
}

// table is the quoted name of table in the scratch database.
func (s scratchDB) table(name string) string {
	return quoteIdent(s.name) + "." + quoteIdent(name)
}

// dropTable is the statement that drops table from the scratch database
// and frees its disk space at once.
func (s scratchDB) dropTable(name string) string {
	return "DROP TABLE IF EXISTS " + s.table(name) + dropNow(s.engine)
}

// dropDatabase is the statement that drops the scratch database.
func (s scratchDB) dropDatabase() string {
	return "DROP DATABASE IF EXISTS " + quoteIdent(s.name) + dropNow(s.engine)
}

// dropNow is the modifier that makes a DROP in a database of engine
// remove the data at once. Atomic databases (and Replicated ones, built
// on them) keep a dropped table's files for
// database_atomic_delay_before_drop_table_sec (8 minutes by default):
// the next table's copy would come on top. NO DELAY is understood by every
// version that has them; Ordinary databases drop at once, and ClickHouse
// 18.16 knows no such modifier.
func dropNow(engine string) string {
	if engine == "Atomic" || engine == "Replicated" {
		return " NO DELAY"
	}
	return ""
}
