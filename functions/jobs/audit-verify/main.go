// Command audit-verify walks every writer's hash chain in api_audit_log
// and reports the first row of each chain whose content, link or sequence
// does not hold: an edit, deletion or insertion by anyone with access to
// the database, superusers included. It runs under shared/job: one JSON
// result line, status ok (exit 0), red when a chain is broken (exit 1) or
// error when it could not check (exit 2), metrics and an alert.
//
// The chain's hash needs no secret, so on its own it cannot tell rows
// removed from a chain's end, or a chain edited and re-hashed from some
// row on. With GUARDIAN_AUDIT_HEADS_FILE set, each run keeps every
// chain's newest row (sequence and hash) in that file, outside the
// database, and the next run holds the chains to it: rows older than the
// last run can then be neither removed nor recomputed unseen. A broken
// chain's head never moves past its break; the other chains' heads still
// move on, so one break leaves no chain unwatched.
//
// The log is append-only, so a break stays for good. Once investigated,
// it can be accepted: GUARDIAN_AUDIT_ACCEPTED_BREAKS names a file that
// lists such breaks (audit.ParseAccepted; a red run prints its breaks in
// that form as "break_entries"). An accepted break no longer makes a run
// red, and the walk goes on past it; any other break still does, and so
// does any change to the rows before an accepted break or to its row (an
// entry is pinned to their hashes).
//
// It needs only SELECT on api_audit_log and on customers' ids and audit
// salts, which its own role (guardian_app_audit_verify, migration 0022)
// holds and deploy gives it: GUARDIAN_PG_APP_DSN, or GUARDIAN_PG_DSN.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/atomicfile"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/job"
)

// envHeadsFile names the file the chains' heads are kept in between runs.
const envHeadsFile = "GUARDIAN_AUDIT_HEADS_FILE"

// envAcceptedFile names the operator's list of accepted breaks.
const envAcceptedFile = "GUARDIAN_AUDIT_ACCEPTED_BREAKS"

func main() { job.Main(spec()) }

func spec() job.Spec {
	return job.Spec{Name: "audit-verify", Timeout: time.Hour, Run: run}
}

func run(ctx context.Context, env *config.Loader, r *job.Report) error {
	name, dsn := config.PGAppDSN, env.Optional(config.PGAppDSN, "")
	if dsn == "" {
		name, dsn = config.PGDSN, env.Optional(config.PGDSN, "")
	}
	if dsn == "" {
		return fmt.Errorf("set %s or %s", config.PGAppDSN, config.PGDSN)
	}
	headsPath := env.Optional(envHeadsFile, "")
	var kept audit.Heads
	if headsPath != "" {
		var err error
		if kept, err = loadHeads(headsPath); err != nil {
			return err
		}
	}
	accepted, err := loadAccepted(env.Optional(envAcceptedFile, ""))
	if err != nil {
		return err
	}
	// Two connections: the walk's snapshot, and a moment's transaction in
	// the same snapshot that reads the customers and ends, so the walk
	// holds no lock on customers (audit.CustomersAsOf).
	var conns [2]*pgx.Conn
	for i := range conns {
		c, err := db.Connect(ctx, name, dsn)
		if err != nil {
			return fmt.Errorf("cannot connect to PostgreSQL: %w", err)
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	tx, err := audit.Snapshot(ctx, conns[0])
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	customers, err := audit.CustomersAsOf(ctx, tx, conns[1])
	if err != nil {
		return err
	}
	rep, err := audit.VerifyAccepting(ctx, tx, customers, kept, accepted)
	if err != nil {
		return err
	}
	_ = tx.Rollback(context.Background())
	breaks, entries := describe(rep.Breaks)
	acceptedSeen, _ := describe(rep.Accepted)
	r.Set("ok", rep.OK())
	r.Set("writers", rep.Writers)
	r.Set("rows", rep.Rows)
	r.Set("unchained_rows", rep.Unchained)
	r.Set("breaks", breaks)
	r.Set("accepted_breaks", acceptedSeen)
	if !rep.OK() {
		r.Set("break_entries", entries)
	}
	var saveErr error
	if headsPath == "" {
		r.Set("heads_kept", false)
	} else {
		r.Set("heads_kept", true)
		r.Set("heads_checked", len(kept))
		// Also on a red run: every chain that held moves on, while a
		// broken one keeps the head that caught it (NextHeads), so the
		// break is reported again, and no chain is left without a head.
		saveErr = saveHeads(headsPath, rep.NextHeads(kept))
	}
	if !rep.OK() {
		red := fmt.Errorf("%w: %d broken link(s): %s", job.ErrRed, len(breaks), strings.Join(breaks, "; "))
		if saveErr != nil {
			return errors.Join(red, saveErr)
		}
		return red
	}
	return saveErr
}

// describe gives each break as text, and as an entry of the accepted
// breaks file.
func describe(breaks []audit.Break) (text, entries []string) {
	text, entries = make([]string, len(breaks)), make([]string, len(breaks))
	for i, b := range breaks {
		text[i], entries[i] = b.String(), b.Entry()
	}
	return text, entries
}

// loadAccepted reads the accepted breaks; no path, none. A file that
// cannot be read or parsed is an error, not an empty or partial list: the
// run stops and says so, rather than go red over breaks the operator did
// accept, or accept fewer than were written.
func loadAccepted(path string) (audit.Accepted, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("accepted breaks file: %w", err)
	}
	defer f.Close()
	a, err := audit.ParseAccepted(f)
	if err != nil {
		return nil, fmt.Errorf("accepted breaks file %s: %w", path, err)
	}
	return a, nil
}

// headsFile is the kept heads' format on disk.
type headsFile struct {
	Version int         `json:"version"`
	Heads   audit.Heads `json:"heads"`
}

// loadHeads reads the kept heads; no file yet is a first run (nothing to
// hold the chains to). A file that is there but unreadable is an error,
// not a fresh start, so that damaging it cannot silently reset the check.
func loadHeads(path string) (audit.Heads, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit heads file: %w", err)
	}
	var f headsFile
	if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 || f.Heads == nil {
		return nil, fmt.Errorf("audit heads file %s is not a heads file of version 1; move it aside only after checking the log by other means", path)
	}
	return f.Heads, nil
}

// saveHeads replaces the file atomically and durably: a crash leaves the
// old heads or the new ones, never half of either.
func saveHeads(path string, heads audit.Heads) error {
	b, err := json.Marshal(headsFile{Version: 1, Heads: heads})
	if err != nil {
		return fmt.Errorf("audit heads file: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600, nil); err != nil {
		return fmt.Errorf("audit heads file: %w", err)
	}
	return nil
}
