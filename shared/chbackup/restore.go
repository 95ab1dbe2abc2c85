package chbackup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"filippo.io/age"
)

// RestoreReport says what Restore loaded, and from where.
type RestoreReport struct {
	Into string `json:"into"`
	TargetVerify
}

// Restore loads the set LATEST names at the first target that answers into
// database into, which must not exist yet: every table of the set,
// created by the set's own statements, each blob checked as VerifyLatest
// checks it (size and SHA-256 against the manifest before anything reads
// it, authenticated decryption, rows counted after it loads). A table's
// TTL is set once its rows are in: set before, its merges could delete
// expired rows while they are counted, and a good set would fail; set
// after, it deletes them as the retention rules say.
//
// The live database is never touched: after a disaster the operator
// restores beside it and then renames the restored tables into place
// (docs/deployment.md, "Restoring ClickHouse"), so that a set that turns
// out bad half-way costs nothing. A restore that fails leaves into as far
// as it got, for the operator to look at and drop.
func Restore(ctx context.Context, cfg Config, into string, identities ...age.Identity) (RestoreReport, error) {
	rep := RestoreReport{Into: into}
	switch {
	case len(identities) == 0:
		return rep, errors.New("restore: no age identity")
	case len(cfg.Targets) == 0:
		return rep, errors.New("restore: no targets configured")
	case !validIdent(into):
		return rep, fmt.Errorf("restore: %q is not a plain database name (letters, digits, underscores)", into)
	case into == cfg.ClickHouse.Database || strings.EqualFold(into, "system") || strings.HasPrefix(into, "restore_verify_"):
		return rep, fmt.Errorf("restore: %s is the live, system or a scratch database; name a new one", into)
	}
	ch := newCHClient(cfg)
	exists, err := one[struct{ N string }](ctx, ch, "SELECT toString(count()) AS N FROM system.databases WHERE name = "+quoteString(into))
	if err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	if exists.N != "0" {
		return rep, fmt.Errorf("restore: database %s exists; restore into a new one", into)
	}
	auth, err := loadSSHAuth(cfg)
	if err != nil {
		return rep, fmt.Errorf("restore: %w", err)
	}
	var r *remote
	var errs []error
	for _, t := range cfg.Targets {
		if r, err = dial(ctx, auth, t); err == nil {
			rep.Target = t.String()
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", t, err))
	}
	if r == nil {
		return rep, fmt.Errorf("restore: no target answers: %w", errors.Join(errs...))
	}
	defer r.Close()
	set, err := readLatest(r)
	if err != nil {
		return rep, fmt.Errorf("restore from %s: %w", rep.Target, err)
	}
	rep.Set = set
	m, err := readManifest(r, set)
	if err != nil {
		return rep, fmt.Errorf("restore from %s: %w", rep.Target, err)
	}
	tmp, err := os.MkdirTemp("", "guardian-restore-clickhouse-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(tmp)

	if err := ch.exec(ctx, "CREATE DATABASE "+quoteIdent(into)); err != nil {
		return rep, fmt.Errorf("restore: create database %s: %w", into, err)
	}
	for _, tm := range m.Tables {
		if err := checkCreate(tm.Create); err != nil {
			return rep, fmt.Errorf("restore: table %s: %w", tm.Name, err)
		}
		create, err := rewriteCreate(tm.Create, m.Database, tm.Name, into)
		if err != nil {
			return rep, fmt.Errorf("restore: table %s: %w", tm.Name, err)
		}
		create, ttl, err := splitTableTTL(create)
		if err != nil {
			return rep, fmt.Errorf("restore: table %s: %w", tm.Name, err)
		}
		if err := checkCreate(create); err != nil {
			return rep, fmt.Errorf("restore: table %s: %w", tm.Name, err)
		}
		if err := ch.exec(ctx, create); err != nil {
			return rep, fmt.Errorf("restore: create table %s: %w", tm.Name, err)
		}
		target := quoteIdent(into) + "." + quoteIdent(tm.Name)
		for _, b := range tm.Blobs {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			if err := verifyBlob(ctx, ch, r, identities, set, tmp, target, tm.Name, b); err != nil {
				return rep, fmt.Errorf("restore: %w", err)
			}
			rep.Blobs++
			rep.Rows += b.Rows
			rep.CipherBytes += b.CipherBytes
		}
		if ttl != "" {
			if err := ch.exec(ctx, "ALTER TABLE "+target+" MODIFY TTL "+ttl); err != nil {
				return rep, fmt.Errorf("restore: table %s: set its TTL again: %w", tm.Name, err)
			}
		}
		rep.Tables++
	}
	rep.OK = true
	return rep, nil
}
