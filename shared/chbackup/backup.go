package chbackup

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// Names on the destinations.
const (
	setLayout     = "20060102T150405Z"
	partialSuffix = ".partial"
	manifestName  = "manifest.json"
	latestName    = "LATEST"
	blobSuffix    = ".native.zst.age"
	// ManifestFormat is the version of the manifest's layout.
	ManifestFormat = 1
)

var setName = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z$`)

// Manifest describes a set. It is stored unencrypted beside the blobs: it
// holds the schema, partition values, counts, sizes and hashes, but no row.
type Manifest struct {
	Format        int       `json:"format"`
	Set           string    `json:"set"`
	Created       time.Time `json:"created"`
	ServerVersion string    `json:"server_version"`
	Database      string    `json:"database"`
	// DataFormat, Compression and Encryption say how a blob is made:
	// ClickHouse Native, then zstd, then age to Recipients.
	DataFormat  string          `json:"data_format"`
	Compression string          `json:"compression"`
	Encryption  string          `json:"encryption"`
	Recipients  []string        `json:"recipients"`
	Tables      []TableManifest `json:"tables"`
	// Skipped lists the tables that are not of the MergeTree family
	// (views, Log, Memory...), which are not backed up.
	Skipped []string `json:"skipped,omitempty"`
}

// TableManifest is one table of a set.
type TableManifest struct {
	Name   string `json:"name"`
	Engine string `json:"engine"`
	// Create is the table's statement as SHOW CREATE TABLE printed it.
	Create       string `json:"create"`
	PartitionKey string `json:"partition_key,omitempty"`
	Blobs        []Blob `json:"blobs"`
}

// Blob is one partition of a table: its rows in Native format, compressed
// with zstd and encrypted with age.
type Blob struct {
	// Partition is the partition's value as ClickHouse prints it (a SQL
	// literal), PartitionID its directory-safe ID.
	Partition   string `json:"partition"`
	PartitionID string `json:"partition_id"`
	// File is the blob's path relative to the set's directory.
	File string `json:"file"`
	// Rows are counted in the dump itself.
	Rows        uint64 `json:"rows"`
	PlainBytes  int64  `json:"plain_bytes"`
	CipherBytes int64  `json:"cipher_bytes"`
	// SHA256 is the hex SHA-256 of the blob as stored (the ciphertext).
	SHA256 string `json:"sha256"`
}

// SetInfo reports a Backup.
type SetInfo struct {
	Name        string         `json:"set"`
	Created     time.Time      `json:"created"`
	Tables      int            `json:"tables"`
	Blobs       int            `json:"blobs"`
	Rows        uint64         `json:"rows"`
	PlainBytes  int64          `json:"plain_bytes"`
	CipherBytes int64          `json:"cipher_bytes"`
	Skipped     []string       `json:"skipped,omitempty"`
	Targets     []TargetResult `json:"targets"`
	// RecipientsChanged names the targets whose previous set was encrypted
	// to other age recipients than this one. Until a set made with the
	// new ones is proven to restore, older sets keep expiring: a wrong
	// recipient would leave no set that restores once they are gone.
	RecipientsChanged []string `json:"recipients_changed,omitempty"`
	// Shrunk names the targets where the new set holds far fewer rows than
	// the set LATEST named (shrinkage), and why: there the set is complete
	// but LATEST still names the set before it (TargetResult.Held).
	Shrunk []string `json:"shrunk,omitempty"`
}

// TargetResult is what happened at one destination.
type TargetResult struct {
	Target string `json:"target"`
	// OK: the set is complete there and LATEST names it.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Held: the set is complete there, but LATEST was left naming the set
	// before it, which held far more rows (shrinkage says how).
	Held string `json:"held,omitempty"`
	// Moved: LATEST had been held on a set as old as sets are kept, and
	// was moved on all the same (keptSet, or this run's set: Backup).
	Moved  string   `json:"moved,omitempty"`
	Pruned []string `json:"pruned,omitempty"`
}

// dest is a destination during a run; err set means it dropped out.
type dest struct {
	r   *remote
	err error
	res *TargetResult
}

func (d *dest) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// Backup writes a new set of every MergeTree-family table of the database
// to every target and makes it LATEST there, then prunes old sets (and
// sets clocks that ran ahead named in the future: see prune). A target
// whose host's clock disagrees with this host's is left untouched
// (checkClock).
//
// Each active partition becomes one blob, streamed from ClickHouse's HTTP
// answer through zstd and age straight into the remote file, hashed and
// counted on the way; no partition is held in memory. Blobs and the
// manifest go into <path>/<set>.partial, which is renamed to <path>/<set>
// once complete; only then is LATEST replaced. A run that stops half-way
// leaves the .partial directory, which the next run removes; LATEST keeps
// naming the previous set.
//
// A target that fails drops out and the others carry on; the error then
// names it. A ClickHouse failure fails the whole set.
func Backup(ctx context.Context, cfg Config) (SetInfo, error) {
	var info SetInfo
	if len(cfg.Recipients) == 0 || len(cfg.Targets) == 0 {
		return info, errors.New("backup: no age recipients or no targets configured")
	}
	now := cfg.now()
	info.Name, info.Created = now.Format(setLayout), now
	// This host's clock as the run goes on, for checkClock: the run's time
	// plus what has passed since (dialling and pruning take time).
	started := time.Now()
	clock := func() time.Time { return now.Add(time.Since(started)) }

	ch := newCHClient(cfg)
	db := cfg.ClickHouse.Database
	m := Manifest{
		Format: ManifestFormat, Set: info.Name, Created: now, Database: db,
		DataFormat: "Native", Compression: "zstd", Encryption: "age",
	}
	for _, r := range cfg.Recipients {
		if s, ok := r.(fmt.Stringer); ok {
			m.Recipients = append(m.Recipients, s.String())
		}
	}
	// The targets first: expired sets are pruned before anything else,
	// so that neither a ClickHouse that is down nor a set that fails (a
	// full disk, which pruning would relieve) keeps them past KeepDays.
	auth, err := loadSSHAuth(cfg)
	if err != nil {
		return info, fmt.Errorf("backup: %w", err)
	}
	dests := make([]*dest, len(cfg.Targets))
	info.Targets = make([]TargetResult, len(cfg.Targets))
	for i, t := range cfg.Targets {
		info.Targets[i].Target = t.String()
		d := &dest{res: &info.Targets[i]}
		dests[i] = d
		d.r, d.err = dial(ctx, auth, t)
		if d.err == nil {
			d.res.Pruned, d.res.Moved, d.err = prepare(d.r, info.Name, now, clock, pruneCutoff(now, cfg.KeepDays))
		}
	}
	defer func() {
		for _, d := range dests {
			if d.r != nil {
				_ = d.r.Close()
			}
		}
	}()
	finish := func(err error) (SetInfo, error) {
		var errs []error
		if err != nil {
			errs = append(errs, err)
		}
		// An unfinished set goes now, where the run failed (the next run
		// would remove it): best effort, the target may be what failed.
		for _, d := range dests {
			if d.r != nil && (err != nil || d.err != nil) {
				_ = d.r.c.RemoveAll(d.r.join(info.Name + partialSuffix))
			}
		}
		for _, d := range dests {
			if d.err == nil && err != nil {
				d.err = errors.New("set not completed")
			}
			d.res.OK = d.err == nil && d.res.Held == ""
			if d.err != nil {
				d.res.Error = d.err.Error()
				if err == nil {
					errs = append(errs, d.err)
				}
			}
		}
		if len(errs) > 0 {
			return info, fmt.Errorf("backup %s: %w", info.Name, errors.Join(errs...))
		}
		return info, nil
	}
	if err := checkLimits(ctx, ch); err != nil {
		return finish(err)
	}
	tables, err := listTables(ctx, ch, db)
	if err != nil {
		return finish(err)
	}
	for _, t := range tables {
		if t.skip {
			m.Skipped = append(m.Skipped, t.Name)
		}
	}
	info.Skipped = m.Skipped
	if len(m.Skipped) == len(tables) {
		// A misspelt or not yet migrated database: a set of nothing would
		// verify green and, as days pass, prune every real set away.
		return finish(fmt.Errorf("database %s has no MergeTree table to back up", db))
	}
	for _, t := range tables {
		if t.skip {
			continue
		}
		if err := checkCreate(t.create); err != nil {
			// Restore verification would refuse the set; say so now.
			return finish(fmt.Errorf("table %s: %w", t.Name, err))
		}
	}
	v, err := one[struct{ V string }](ctx, ch, "SELECT version() AS V")
	if err != nil {
		return finish(fmt.Errorf("clickhouse version: %w", err))
	}
	m.ServerVersion = v.V

	if live(dests) == 0 {
		return finish(nil)
	}

	zw, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return info, err
	}
	defer zw.Close()
	partial := info.Name + partialSuffix
	for _, t := range tables {
		if t.skip {
			continue
		}
		tm := TableManifest{Name: t.Name, Engine: t.Engine, Create: t.create, PartitionKey: t.PartitionKey, Blobs: []Blob{}}
		dir := fileName(t.Name)
		for _, d := range dests {
			if d.err == nil {
				d.fail(d.r.c.MkdirAll(d.r.join(partial, dir)))
			}
		}
		for _, p := range t.parts {
			b := Blob{Partition: p.Partition, PartitionID: p.PartitionID, File: dir + "/" + fileName(p.PartitionID) + blobSuffix}
			if err := dumpBlob(ctx, ch, cfg, zw, db, t, &b, dests, path.Join(partial, b.File)); err != nil {
				return finish(fmt.Errorf("table %s partition %s: %w", t.Name, p.Partition, err))
			}
			tm.Blobs = append(tm.Blobs, b)
			info.Blobs++
			info.Rows += b.Rows
			info.PlainBytes += b.PlainBytes
			info.CipherBytes += b.CipherBytes
			if cfg.afterBlob != nil {
				cfg.afterBlob(t.Name, p.PartitionID)
			}
			if err := ctx.Err(); err != nil {
				return finish(err)
			}
		}
		m.Tables = append(m.Tables, tm)
		info.Tables++
	}

	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return finish(err)
	}
	for _, d := range dests {
		if d.err != nil {
			continue
		}
		r := d.r
		if err := r.writeFile(r.join(partial, manifestName), manifest); err != nil {
			d.fail(fmt.Errorf("%s: manifest: %w", r.target, err))
			continue
		}
		if err := r.c.Rename(r.join(partial), r.join(info.Name)); err != nil {
			d.fail(fmt.Errorf("%s: complete the set: %w", r.target, err))
			continue
		}
		if prev := previousRecipients(r); prev != nil && !sameStrings(prev, m.Recipients) {
			info.RecipientsChanged = append(info.RecipientsChanged, r.target.String())
		}
		keep := info.Name
		if prevSet, prev, ok := latestManifest(r); ok && !cfg.AcceptShrink {
			if why := shrinkage(prev, m); why != "" {
				// A database emptied by a fault, or a table gone: LATEST
				// keeps naming the full set, which restores by default,
				// and pruning keeps it, until an operator accepts the drop;
				// but no longer than sets are kept, which the posture's
				// deletion promise bounds (a purge is such a drop).
				if t, err := time.Parse(setLayout, prevSet); err == nil && t.Before(pruneCutoff(now, cfg.KeepDays)) {
					d.res.Moved = fmt.Sprintf("%s; %s moved all the same: %s is as old as sets are kept", why, latestName, prevSet)
				} else {
					d.res.Held = fmt.Sprintf("%s; LATEST still names %s", why, prevSet)
					info.Shrunk = append(info.Shrunk, r.target.String()+": "+d.res.Held)
					keep = prevSet
				}
			}
		}
		if keep == info.Name {
			if err := r.writeFile(r.join(latestName), []byte(info.Name+"\n")); err != nil {
				d.fail(fmt.Errorf("%s: LATEST: %w", r.target, err))
				continue
			}
		}
		pruned, err := prune(r, now, pruneCutoff(now, cfg.KeepDays), keep)
		d.res.Pruned = append(d.res.Pruned, pruned...)
		if err != nil {
			d.fail(fmt.Errorf("%s: prune: %w", r.target, err))
		}
	}
	return finish(ctx.Err())
}

// previousRecipients are the recipients of the set LATEST names at r, or
// nil when there is none or it cannot be read (a first backup; a damaged
// set, which verification reports).
func previousRecipients(r *remote) []string {
	_, m, ok := latestManifest(r)
	if !ok {
		return nil
	}
	return m.Recipients
}

// latestManifest is the set LATEST names at r and its manifest; false when
// there is none or it cannot be read (a first backup; a damaged set,
// which verification reports, and which is no set to hold on to).
func latestManifest(r *remote) (string, Manifest, bool) {
	set, err := readLatest(r)
	if err != nil {
		return "", Manifest{}, false
	}
	m, err := readManifest(r, set)
	if err != nil {
		return "", Manifest{}, false
	}
	return set, m, true
}

// A table shrinks too far for a new set to replace LATEST unasked when it
// holds less than half its rows, and ShrinkRows fewer (gone or emptied
// included). Retention sweeps and purges take a few percent a day; a
// database re-created empty after a fault, or a table dropped, takes it
// all, and a set of it would otherwise become what a restore loads by
// default and push the full sets out by pruning. Small tables, which a
// day's retention may empty, are left alone.
const ShrinkRows = 1000

// shrinkage says which tables of prev next holds far fewer rows of (see
// ShrinkRows), or "" when none.
func shrinkage(prev, next Manifest) string {
	rows := func(t TableManifest) uint64 {
		var n uint64
		for _, b := range t.Blobs {
			n += b.Rows
		}
		return n
	}
	now := map[string]uint64{}
	for _, t := range next.Tables {
		now[t.Name] = rows(t)
	}
	var why []string
	for _, t := range prev.Tables {
		was := rows(t)
		is, ok := now[t.Name]
		switch {
		case is*2 >= was || was-is < ShrinkRows:
		case !ok:
			why = append(why, fmt.Sprintf("table %s is gone (%d rows in %s)", t.Name, was, prev.Set))
		default:
			why = append(why, fmt.Sprintf("table %s holds %d rows, %d in %s", t.Name, is, was, prev.Set))
		}
	}
	return strings.Join(why, ", ")
}

// sameStrings reports whether a and b hold the same strings, in any order.
func sameStrings(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

func live(dests []*dest) int {
	n := 0
	for _, d := range dests {
		if d.err == nil {
			n++
		}
	}
	return n
}

// prepare removes what interrupted runs left at r (.partial sets and
// temporary files), makes the new set's .partial directory, checks the
// clocks by it, and removes the sets prune removes (never the one LATEST
// names). It returns the sets it pruned. Pruning comes before the dump,
// so that a run that then fails (a full disk) or a ClickHouse that is
// down cannot keep expired sets.
//
// The time the backup host gives the new directory is that host's clock:
// when it differs from clock (this host's, now) by more than
// clockTolerance, one of the two clocks is wrong, and prepare removes
// that directory again and prunes nothing (checkClock). now is the run's
// time, which names the set and prunes. A disk too full for even that
// directory, once the leftovers are gone, fails the target with nothing
// pruned: without the clock check pruning could remove the newest sets.
func prepare(r *remote, set string, now time.Time, clock func() time.Time, cutoff time.Time) (pruned []string, moved string, err error) {
	if err := r.c.MkdirAll(r.target.Path); err != nil {
		return nil, "", fmt.Errorf("%s: %w", r.target, err)
	}
	partial := set + partialSuffix
	entries, err := r.c.ReadDir(r.target.Path)
	if err != nil {
		return nil, "", fmt.Errorf("%s: list: %w", r.target, err)
	}
	// Leftovers of interrupted runs go first, before the new set's
	// directory is made: removing them needs no clock, and on a full disk
	// they may be what makes room for it (and so for the clock check, and
	// the pruning, that would relieve it).
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == set:
			return nil, "", fmt.Errorf("%s: set %s exists already", r.target, set)
		case name == partial:
			// The same name: an interrupted run at the same second, or
			// a clock stepped back; what is there is not this run's.
			return nil, "", fmt.Errorf("%s: %s exists already", r.target, partial)
		case e.IsDir() && strings.HasSuffix(name, partialSuffix) && setName.MatchString(strings.TrimSuffix(name, partialSuffix)),
			!e.IsDir() && strings.HasPrefix(name, tmpPrefix):
			if err := r.c.RemoveAll(r.join(name)); err != nil {
				return nil, "", fmt.Errorf("%s: remove the unfinished %s: %w", r.target, name, err)
			}
		}
	}
	if err := r.c.Mkdir(r.join(partial)); err != nil {
		return nil, "", fmt.Errorf("%s: make %s (a full disk? nothing was pruned: pruning waits for the clock check, which needs this directory): %w", r.target, partial, err)
	}
	if err := checkClock(r, partial, clock()); err != nil {
		_ = r.c.RemoveAll(r.join(partial))
		return nil, "", fmt.Errorf("%s: %w", r.target, err)
	}
	keep, moved, moveErr := keptSet(r, entries, now, cutoff)
	if keep == "" && moveErr != nil {
		return nil, "", moveErr
	}
	pruned, err = prune(r, now, cutoff, keep)
	if err != nil {
		return pruned, moved, errors.Join(moveErr, fmt.Errorf("%s: prune: %w", r.target, err))
	}
	return pruned, moved, moveErr
}

// clockTolerance is how far this host's clock and the backup host's may
// differ (checkClock), and how far ahead of the run's clock a set may be
// named and still count as of now: a clock stepped back a little, or a
// run started by hand just after another, names a set slightly out of
// order.
const clockTolerance = time.Hour

// checkClock compares now, this host's clock, with the backup host's:
// the modification time it gave dir, which this run has just made. A
// difference over clockTolerance fails: a clock ahead would name the set
// in the future and prune by a cutoff in the future (every set but
// LATEST's, for a clock a month ahead); one behind would prune the newest
// sets as named in the future. Which clock is wrong cannot be told from
// here, so the error gives both.
func checkClock(r *remote, dir string, now time.Time) error {
	fi, err := r.c.Stat(r.join(dir))
	if err != nil {
		return fmt.Errorf("read the backup host's time (%s): %w", dir, err)
	}
	host := fi.ModTime()
	if host.Unix() <= 0 {
		return fmt.Errorf("the backup host gives no time for %s, so its clock cannot be compared with this host's: nothing was pruned or written here", dir)
	}
	d := now.Sub(host)
	var rel string
	switch {
	case d > clockTolerance:
		rel = fmt.Sprintf("ahead of the backup host's (%s) by %v", host.UTC().Format(time.RFC3339), d)
	case d < -clockTolerance:
		rel = fmt.Sprintf("behind the backup host's (%s) by %v", host.UTC().Format(time.RFC3339), -d)
	default:
		return nil
	}
	return fmt.Errorf("clocks disagree: this host's clock (%s) is %s, more than the %v allowed: nothing was pruned or written here; fix the clock that is wrong (timedatectl, NTP)",
		now.UTC().Format(time.RFC3339), rel, clockTolerance)
}

// keptSet is the set pruning must leave at r, the last good one: the one
// LATEST names, however old or far ahead. Without LATEST (or when it
// names no set there), the newest set not named ahead of now: a set named
// by a clock that ran ahead sorts last, but is not the newest. When every
// set is named ahead, the one the backup host dates last (its directory's
// modification time, when its manifest was written): a set named ahead is
// then the only kind there is, and one of them must stay.
//
// One exception: a LATEST held on a set as old as cutoff (Backup keeps it
// from a set of a shrunken database) while newer complete sets exist is
// moved to the newest of them first, so that the set goes now, whether or
// not this run completes: the posture's 30 days bound every set.
func keptSet(r *remote, entries []os.FileInfo, now, cutoff time.Time) (keep, moved string, err error) {
	b, err := r.readFile(r.join(latestName), 256)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("%s: read %s: %w", r.target, latestName, err)
	}
	latest := strings.TrimSpace(string(b))
	var newest string
	var lastAhead os.FileInfo
	found := false
	for _, e := range entries {
		t, ok := setTime(e)
		switch {
		case !ok:
		case e.Name() == latest:
			found = true
			if !t.Before(cutoff) {
				return latest, "", nil
			}
		case namedAhead(t, now):
			if lastAhead == nil || e.ModTime().After(lastAhead.ModTime()) ||
				e.ModTime().Equal(lastAhead.ModTime()) && e.Name() > lastAhead.Name() {
				lastAhead = e
			}
		default:
			newest = max(newest, e.Name())
		}
	}
	if found {
		if newest <= latest {
			return latest, "", nil
		}
		if err := r.writeFile(r.join(latestName), []byte(newest+"\n")); err != nil {
			// The set stays (LATEST names it), the other expired ones go.
			return latest, "", fmt.Errorf("%s: move %s from %s, as old as sets are kept, to %s: %w", r.target, latestName, latest, newest, err)
		}
		return newest, fmt.Sprintf("%s moved from %s, as old as sets are kept, to %s", latestName, latest, newest), nil
	}
	if newest == "" && lastAhead != nil {
		return lastAhead.Name(), "", nil
	}
	return newest, "", nil
}

// setTime is the time a set directory's name gives; false for anything
// that is not a set.
func setTime(e os.FileInfo) (time.Time, bool) {
	if !e.IsDir() || !setName.MatchString(e.Name()) {
		return time.Time{}, false
	}
	t, err := time.Parse(setLayout, e.Name())
	return t, err == nil
}

// namedAhead reports whether a set named t is named ahead of now. Once
// the clocks agree (checkClock), such a set was named while both ran
// ahead (one bad NTP source), and its name would keep it for ever.
func namedAhead(t, now time.Time) bool { return t.After(now.Add(clockTolerance)) }

// pruneSlack is how much younger than KeepDays a set may be when it is
// pruned. Runs are daily at about the same hour but not to the minute,
// and an account is purged up to two hours after its deletion request
// (an hour to change one's mind, then the hourly purge): the last set
// holding its data may start after the request. The posture promises the
// backups free of it within 30 days of the request, so with KeepDays 30
// that set must go at the run 29 days on, whatever its minute: a set is
// pruned once older than KeepDays less 30 hours (29 daily sets are kept).
const pruneSlack = 30 * time.Hour

// pruneCutoff is the time before which sets are pruned.
func pruneCutoff(now time.Time, keepDays int) time.Time {
	return now.AddDate(0, 0, -keepDays).Add(pruneSlack)
}

// prune removes, except keep (the set LATEST names, or the run's new
// set), the sets named before cutoff and the sets named ahead of now:
// clocks that ran ahead named them, and by their names they would outlive
// KeepDays by as much. keep being a complete set, the last good backup is
// never removed. now must be a clock the backup host agrees with
// (checkClock). It returns the names it removed.
func prune(r *remote, now, cutoff time.Time, keep string) ([]string, error) {
	entries, err := r.c.ReadDir(r.target.Path)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		t, ok := setTime(e)
		if !ok || e.Name() == keep || !t.Before(cutoff) && !namedAhead(t, now) {
			continue
		}
		if err := r.c.RemoveAll(r.join(e.Name())); err != nil {
			return removed, fmt.Errorf("remove %s: %w", e.Name(), err)
		}
		removed = append(removed, e.Name())
	}
	sort.Strings(removed)
	return removed, nil
}

// dumpBlob streams one partition to every live destination and fills in
// b's counts and hash.
func dumpBlob(ctx context.Context, ch *chClient, cfg Config, zw *zstd.Encoder, db string, t table, b *Blob, dests []*dest, rel string) error {
	// The files are opened before the query: once ClickHouse answers, the
	// answer must be read on, or ClickHouse abandons it (see pushTimeout).
	type out struct {
		d *dest
		u *uploader
	}
	var outs []out
	var fan fanout
	for _, d := range dests {
		if d.err != nil {
			continue
		}
		f, err := d.r.c.OpenFile(d.r.join(rel), os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err != nil {
			d.fail(fmt.Errorf("%s: create %s: %w", d.r.target, rel, err))
			continue
		}
		o := out{d, newUploader(f, d.r.fsync, d.r.abort)}
		outs = append(outs, o)
		fan = append(fan, fanWriter{o.u, d})
	}
	if len(outs) == 0 {
		return errors.New("no destination is left")
	}
	closeAll := func() {
		for _, o := range outs {
			_ = o.u.Close()
		}
	}

	q := "SELECT * FROM " + quoteIdent(db) + "." + quoteIdent(t.Name)
	if t.PartitionKey != "" {
		q += " WHERE (" + t.PartitionKey + ") = " + b.Partition
	}
	resp, err := ch.post(ctx, q+" FORMAT Native", nil)
	if err != nil {
		closeAll()
		return fmt.Errorf("clickhouse: %w", err)
	}
	defer resp.Body.Close()

	h := sha256.New()
	var cipherN, plainN counter
	aw, err := age.Encrypt(io.MultiWriter(h, &cipherN, fan), cfg.Recipients...)
	if err != nil {
		closeAll()
		return err
	}
	zw.Reset(aw)
	br := bufio.NewReaderSize(io.TeeReader(resp.Body, io.MultiWriter(zw, &plainN)), 1<<20)
	st, dumpErr := CountNativeRows(br)
	if dumpErr == nil {
		_, dumpErr = io.Copy(io.Discard, br) // nothing is left; make sure
	}
	// Finish in order even after an error, so no goroutine is left writing.
	zerr := zw.Close()
	aerr := aw.Close()
	for _, o := range outs {
		if err := o.u.Close(); err != nil {
			o.d.fail(fmt.Errorf("%s: write %s: %w", o.d.r.target, rel, err))
		}
	}
	if dumpErr != nil {
		return dumpErr
	}
	if err := errors.Join(zerr, aerr); err != nil {
		return err
	}
	b.Rows, b.PlainBytes, b.CipherBytes = st.Rows, int64(plainN), int64(cipherN)
	b.SHA256 = hex.EncodeToString(h.Sum(nil))
	for _, o := range outs {
		if o.d.err != nil {
			continue
		}
		if fi, err := o.d.r.c.Stat(o.d.r.join(rel)); err != nil {
			o.d.fail(fmt.Errorf("%s: stat %s: %w", o.d.r.target, rel, err))
		} else if fi.Size() != b.CipherBytes {
			o.d.fail(fmt.Errorf("%s: %s has %d bytes, %d were sent", o.d.r.target, rel, fi.Size(), b.CipherBytes))
		}
	}
	if live(dests) == 0 {
		return errors.New("no destination is left")
	}
	return nil
}

type counter int64

func (c *counter) Write(p []byte) (int, error) { *c += counter(len(p)); return len(p), nil }

// fanout writes the same bytes to several destinations; one that fails
// drops out, and only when all have is the write an error.
type fanout []fanWriter

type fanWriter struct {
	u *uploader
	d *dest
}

// Write gives every destination until pushTimeout from now to take p:
// they write concurrently, so one that stalls costs the dump that long
// at most, however many others wait behind it or stall too.
func (f fanout) Write(p []byte) (int, error) {
	ok := 0
	deadline := time.Now().Add(pushTimeout)
	for _, w := range f {
		if w.d.err != nil {
			continue
		}
		if _, err := w.u.write(p, deadline); err != nil {
			w.d.fail(fmt.Errorf("%s: write: %w", w.d.r.target, w.d.r.explain(err)))
			continue
		}
		ok++
	}
	if ok == 0 {
		return 0, errors.New("every destination failed")
	}
	return len(p), nil
}

// table is a table to back up, with its active partitions.
type table struct {
	Name         string `json:"name"`
	Engine       string `json:"engine"`
	PartitionKey string `json:"partition_key"`
	create       string
	skip         bool
	parts        []partition
}

type partition struct {
	Table       string `json:"table"`
	Partition   string `json:"partition"`
	PartitionID string `json:"partition_id"`
}

// listTables reads the database's tables, their create statements and
// their active partitions. ClickHouse 18.16 has system.tables.partition_key;
// the dump selects a partition with WHERE (<partition_key>) = <partition>,
// partition being the value as a literal (18.16 has no _partition_id).
func listTables(ctx context.Context, ch *chClient, db string) ([]table, error) {
	tables, err := rows[table](ctx, ch, "SELECT name, engine, partition_key FROM system.tables WHERE database = "+quoteString(db)+" AND is_temporary = 0 ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	parts, err := rows[partition](ctx, ch, "SELECT table, partition, partition_id FROM system.parts WHERE database = "+quoteString(db)+" AND active GROUP BY table, partition, partition_id ORDER BY table, partition_id")
	if err != nil {
		return nil, fmt.Errorf("list partitions: %w", err)
	}
	byTable := map[string][]partition{}
	for _, p := range parts {
		byTable[p.Table] = append(byTable[p.Table], p)
	}
	for i := range tables {
		t := &tables[i]
		// MergeTree, ReplacingMergeTree, ReplicatedMergeTree...; the inner
		// table of a materialized view is refilled by its view.
		if !strings.HasSuffix(t.Engine, "MergeTree") || strings.HasPrefix(t.Name, ".inner.") {
			t.skip = true
			continue
		}
		sc, err := one[struct{ Statement string }](ctx, ch, "SHOW CREATE TABLE "+quoteIdent(db)+"."+quoteIdent(t.Name))
		if err != nil {
			return nil, fmt.Errorf("show create table %s: %w", t.Name, err)
		}
		t.create = sc.Statement
		t.parts = byTable[t.Name]
		if t.PartitionKey == "" && len(t.parts) > 1 {
			return nil, fmt.Errorf("table %s has %d partitions but no partition key", t.Name, len(t.parts))
		}
	}
	return tables, nil
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// fileName is s when it is safe as a file name, else x + its hex.
func fileName(s string) string {
	if safeName.MatchString(s) {
		return s
	}
	return "x" + hex.EncodeToString([]byte(s))
}

func (cfg Config) now() time.Time {
	if cfg.clock != nil {
		return cfg.clock().UTC().Truncate(time.Second)
	}
	return time.Now().UTC().Truncate(time.Second)
}
