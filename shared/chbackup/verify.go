package chbackup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/glassmkr/guardian/shared/job"
)

// VerifyReport reports a VerifyLatest.
type VerifyReport struct {
	Targets []TargetVerify `json:"targets"`
}

// TargetVerify is the check of one destination's latest set.
type TargetVerify struct {
	Target      string `json:"target"`
	Set         string `json:"set,omitempty"`
	Tables      int    `json:"tables"`
	Blobs       int    `json:"blobs"`
	Rows        uint64 `json:"rows"`
	CipherBytes int64  `json:"cipher_bytes"`
	OK          bool   `json:"ok"`
	Error       string `json:"error,omitempty"`
}

// ReadIdentities reads an age identity file (AGE-SECRET-KEY-1... lines).
func ReadIdentities(file string) ([]age.Identity, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot read %s", EnvAgeIdentity, file)
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		// age's message may quote the file; never print key material.
		return nil, fmt.Errorf("%s: %s holds no valid age identity", EnvAgeIdentity, file)
	}
	return ids, nil
}

// VerifyLatest restores the set LATEST names at each target into a scratch
// database (restore_verify_<database's tag>_<random>, dropped at the end,
// on failure too, and by the next run if this one was killed)
// and checks it against the manifest: each blob's size and SHA-256, that it
// decrypts and decompresses, its plaintext size, and that loading it adds
// the manifest's number of rows.
//
// A finding about the backup (missing LATEST, manifest or blob; wrong size
// or hash; a blob that does not decrypt or decompress; a statement or blob
// ClickHouse refuses; a row count that differs) is an error wrapping
// job.ErrRed. Not being able to check (a target or ClickHouse unreachable,
// a local disk full) is a plain error.
func VerifyLatest(ctx context.Context, cfg Config, identities ...age.Identity) (VerifyReport, error) {
	var rep VerifyReport
	if len(identities) == 0 {
		return rep, errors.New("verify: no age identity")
	}
	if len(cfg.Targets) == 0 {
		return rep, errors.New("verify: no targets configured")
	}
	auth, err := loadSSHAuth(cfg)
	if err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	ch := newCHClient(cfg)
	// A run killed outright left its scratch copy: plaintext customer data
	// that nothing else would ever delete (account-purge works on the real
	// database only). Runs are one at a time (the job's lock).
	if err := dropScratch(ctx, ch, cfg.ClickHouse.Database); err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	var errs []error
	for _, t := range cfg.Targets {
		tv := TargetVerify{Target: t.String()}
		err := verifyTarget(ctx, ch, auth, t, identities, cfg.ClickHouse.Database, &tv)
		tv.OK = err == nil
		if err != nil {
			tv.Error = err.Error()
			errs = append(errs, fmt.Errorf("%s: %w", t, err))
		}
		rep.Targets = append(rep.Targets, tv)
	}
	if len(errs) > 0 {
		return rep, fmt.Errorf("verify: %w", errors.Join(errs...))
	}
	return rep, nil
}

func red(format string, a ...any) error {
	return fmt.Errorf("%w: %s", job.ErrRed, fmt.Sprintf(format, a...))
}

// chRed turns ClickHouse refusing a statement into a finding; other
// errors (ClickHouse not reachable) stay plain.
func chRed(what string, err error) error {
	var ce *chError
	if errors.As(err, &ce) {
		return red("%s: %v", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// scratchPrefix names the scratch databases of verifications of db.
func scratchPrefix(db string) string {
	sum := sha256.Sum256([]byte(db))
	return "restore_verify_" + hex.EncodeToString(sum[:4]) + "_"
}

// dropScratch drops scratch databases a killed verification of db left,
// and those of the unnamed form (restore_verify_<12 hex>) earlier
// versions made.
func dropScratch(ctx context.Context, ch *chClient, db string) error {
	left, err := rows[struct{ Name string }](ctx, ch, "SELECT name AS Name FROM system.databases WHERE startsWith(name, "+
		quoteString(scratchPrefix(db))+") OR match(name, '^restore_verify_[0-9a-f]{12}$')")
	if err != nil {
		return fmt.Errorf("list leftover scratch databases: %w", err)
	}
	for _, d := range left {
		if err := ch.exec(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(d.Name)); err != nil {
			return fmt.Errorf("drop leftover scratch database %s: %w", d.Name, err)
		}
	}
	return nil
}

func verifyTarget(ctx context.Context, ch *chClient, auth *sshAuth, t Target, ids []age.Identity, db string, tv *TargetVerify) error {
	r, err := dial(ctx, auth, t)
	if err != nil {
		return err
	}
	defer r.Close()

	latest, err := r.readFile(r.join(latestName), 256)
	if errors.Is(err, os.ErrNotExist) {
		return red("no %s", latestName)
	} else if err != nil {
		return fmt.Errorf("read %s: %w", latestName, err)
	}
	set := strings.TrimSpace(string(latest))
	if !setName.MatchString(set) {
		return red("%s does not name a set", latestName)
	}
	tv.Set = set
	raw, err := r.readFile(r.join(set, manifestName), 64<<20)
	if errors.Is(err, os.ErrNotExist) {
		return red("set %s has no manifest", set)
	} else if err != nil {
		return fmt.Errorf("read the manifest of %s: %w", set, err)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return red("the manifest of %s is not valid JSON", set)
	}
	if m.Set != set || m.Format != ManifestFormat {
		return red("the manifest of %s names set %q, format %d", set, m.Set, m.Format)
	}
	if len(m.Tables) == 0 {
		// A backup of nothing restores, and proves nothing.
		return red("the manifest of %s lists no table", set)
	}

	tmp, err := os.MkdirTemp("", "guardian-restore-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	scratch := scratchPrefix(db) + hex.EncodeToString(rnd[:])
	if err := ch.exec(ctx, "CREATE DATABASE "+scratch); err != nil {
		return fmt.Errorf("create the scratch database: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = ch.exec(dctx, "DROP DATABASE IF EXISTS "+scratch)
	}()

	for _, tm := range m.Tables {
		if err := checkCreate(tm.Create); err != nil {
			return red("table %s: %v", tm.Name, err)
		}
		create, err := rewriteCreate(tm.Create, m.Database, tm.Name, scratch)
		if err != nil {
			return red("table %s: %v", tm.Name, err)
		}
		if err := ch.exec(ctx, create); err != nil {
			return chRed("create table "+tm.Name, err)
		}
		target := quoteIdent(scratch) + "." + quoteIdent(tm.Name)
		for _, b := range tm.Blobs {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := verifyBlob(ctx, ch, r, ids, set, tmp, target, tm.Name, b); err != nil {
				return err
			}
			tv.Blobs++
			tv.Rows += b.Rows
			tv.CipherBytes += b.CipherBytes
		}
		tv.Tables++
	}
	return nil
}

func verifyBlob(ctx context.Context, ch *chClient, r *remote, ids []age.Identity, set, tmp, target, tableName string, b Blob) error {
	what := fmt.Sprintf("table %s partition %s", tableName, b.Partition)
	if b.File == "" || path.IsAbs(b.File) || strings.Contains(b.File, "..") {
		return red("%s: manifest names the file %q", what, b.File)
	}
	// Download and check size and hash before anything reads the content.
	src, err := r.c.Open(r.join(set, b.File))
	if errors.Is(err, os.ErrNotExist) {
		return red("%s: blob %s is missing", what, b.File)
	} else if err != nil {
		return fmt.Errorf("%s: open: %w", what, err)
	}
	enc := filepath.Join(tmp, "blob.age")
	f, err := os.Create(enc)
	if err != nil {
		src.Close()
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), src)
	src.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: download: %w", what, err)
	}
	if n != b.CipherBytes {
		return red("%s: blob has %d bytes, the manifest says %d", what, n, b.CipherBytes)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != b.SHA256 {
		return red("%s: blob's SHA-256 differs from the manifest", what)
	}

	// age writes plaintext before it reaches a tampered chunk: decrypt to
	// a temporary name and keep the file only when the whole blob
	// authenticated.
	zst := filepath.Join(tmp, "blob.zst")
	if err := decryptFile(enc, zst, ids); err != nil {
		return err
	}
	_ = os.Remove(enc)

	zf, err := os.Open(zst)
	if err != nil {
		return err
	}
	defer func() { zf.Close(); os.Remove(zst) }()
	zr, err := zstd.NewReader(zf, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return red("%s: not zstd: %v", what, err)
	}
	defer zr.Close()
	body := &decodeReader{r: zr}

	before, err := count(ctx, ch, target)
	if err != nil {
		return err
	}
	if b.PlainBytes == 0 {
		_, err = io.Copy(io.Discard, body)
	} else {
		err = ch.insert(ctx, target, body)
	}
	if body.err != nil {
		return red("%s: decompress: %v", what, body.err)
	}
	if err != nil {
		return chRed(what+": load", err)
	}
	if body.n != b.PlainBytes {
		return red("%s: %d bytes after decompression, the manifest says %d", what, body.n, b.PlainBytes)
	}
	after, err := count(ctx, ch, target)
	if err != nil {
		return err
	}
	if after-before != b.Rows {
		return red("%s: %d rows loaded, the manifest says %d", what, after-before, b.Rows)
	}
	return nil
}

func decryptFile(src, dst string, ids []age.Identity) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	dec, err := age.Decrypt(in, ids...)
	if err != nil {
		return red("blob does not decrypt: %v", err)
	}
	part := dst + ".partial"
	out, err := os.Create(part)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, dec)
	if cerr := out.Close(); err == nil && cerr != nil {
		os.Remove(part)
		return cerr
	}
	if err != nil {
		os.Remove(part)
		var pe *os.PathError
		if errors.As(err, &pe) { // the local disk, not the blob
			return err
		}
		return red("blob does not decrypt: %v", err)
	}
	return os.Rename(part, dst)
}

// decodeReader remembers the decompressor's error, which the HTTP client
// would otherwise report as a failed request.
type decodeReader struct {
	r   io.Reader
	n   int64
	err error
}

func (d *decodeReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.n += int64(n)
	if err != nil && err != io.EOF {
		d.err = err
	}
	return n, err
}

func count(ctx context.Context, ch *chClient, table string) (uint64, error) {
	c, err := one[struct{ N string }](ctx, ch, "SELECT toString(count()) AS N FROM "+table)
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", table, err)
	}
	return strconv.ParseUint(c.N, 10, 64)
}

// rewriteCreate points a CREATE TABLE statement of db.table at scratch.
func rewriteCreate(stmt, db, table, scratch string) (string, error) {
	rest, ok := strings.CutPrefix(stmt, "CREATE TABLE ")
	if !ok {
		return "", errors.New("the create statement is not a CREATE TABLE")
	}
	for _, d := range identForms(db) {
		for _, t := range identForms(table) {
			if after, ok := strings.CutPrefix(rest, d+"."+t); ok && after != "" && (after[0] == ' ' || after[0] == '(') {
				return "CREATE TABLE " + quoteIdent(scratch) + "." + quoteIdent(table) + after, nil
			}
		}
	}
	return "", fmt.Errorf("the create statement does not name %s.%s", db, table)
}

// identForms are the ways ClickHouse may print an identifier.
func identForms(s string) []string {
	if validIdent(s) {
		return []string{s, quoteIdent(s)}
	}
	return []string{quoteIdent(s)}
}
