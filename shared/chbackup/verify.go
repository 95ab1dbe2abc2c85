package chbackup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
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
	// SpaceChecked counts the tables whose room on ClickHouse's disks was
	// checked before loading: none where ClickHouse cannot tell (18.16).
	SpaceChecked int    `json:"space_checked"`
	OK           bool   `json:"ok"`
	Error        string `json:"error,omitempty"`
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
// database (restore_verify_<database's tag>_<deadline>_<random>) and checks
// it against the manifest: each blob's size and SHA-256, that it decrypts
// and decompresses, its plaintext size, and that loading it adds the
// manifest's number of rows. Tables are loaded one at a time, without
// their table TTL, each after checking that ClickHouse's disks have room
// for it where ClickHouse can tell, and dropped once checked; the database
// is dropped at the end, on failure too, and by a later run if this one
// was killed (once ctx's deadline has passed: runs may overlap).
//
// A finding about the backup (missing LATEST, manifest or blob; wrong size
// or hash; a blob that does not decrypt or decompress; a statement or blob
// ClickHouse refuses; a row count that differs) is an error wrapping
// job.ErrRed. Not being able to check (a target or ClickHouse unreachable,
// a local disk full, too little room on ClickHouse's disks for a table's
// copy) is a plain error.
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
	// The scratch database's name carries the run's deadline, which other
	// runs go by before they drop it.
	deadline, ok := ctx.Deadline()
	if !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, maxVerifyRun)
		defer cancel()
		deadline, _ = ctx.Deadline()
	}
	ch := newCHClient(cfg)
	// A run killed outright left its scratch copy: plaintext customer data
	// that nothing else would ever delete (account-purge works on the real
	// database only).
	if err := dropScratch(ctx, ch, cfg.ClickHouse.Database, time.Now()); err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	var errs []error
	for _, t := range cfg.Targets {
		tv := TargetVerify{Target: t.String()}
		err := verifyTarget(ctx, ch, auth, t, identities, cfg.ClickHouse.Database, deadline, cfg.ScratchNote, &tv)
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

// targetRun is one target's verification: where its blobs come from and
// where they are loaded.
type targetRun struct {
	ch      *chClient
	r       *remote
	ids     []age.Identity
	set     string
	tmp     string
	scratch scratchDB
	// live is the live database (the configured one, the set's tables'
	// home), whose tables' sizes on disk tell how much room their copies
	// take.
	live string
	// measure is how ClickHouse tells the free space a table's copy
	// will take, if it can.
	measure spaceSource
	tv      *TargetVerify
}

func verifyTarget(ctx context.Context, ch *chClient, auth *sshAuth, t Target, ids []age.Identity, db string, deadline time.Time,
	note func(string, bool) error, tv *TargetVerify) error {
	r, err := dial(ctx, auth, t)
	if err != nil {
		return err
	}
	defer r.Close()

	set, err := readLatest(r)
	if err != nil {
		return err
	}
	tv.Set = set
	m, err := readManifest(r, set)
	if err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "guardian-restore-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	tr := &targetRun{ch: ch, r: r, ids: ids, set: m.Set, tmp: tmp, live: db, tv: tv}
	if tr.measure, err = spaceSourceOf(ctx, ch); err != nil {
		return err
	}
	tr.scratch, err = createScratch(ctx, ch, db, deadline, note)
	if tr.scratch.name == "" { // the note refused it: nothing was created
		return err
	}
	defer func() {
		// Also after a failure half-way: the scratch copy is plaintext.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if ch.exec(dctx, tr.scratch.dropDatabase()) == nil && note != nil {
			_ = note(tr.scratch.name, true) // kept otherwise, for the clean-up to drop
		}
	}()
	if err != nil {
		return err
	}
	stop, err := waitTurn(ctx, ch, db, tr.scratch.name)
	defer stop() // before the database is dropped
	if err != nil {
		return err
	}
	for _, tm := range m.Tables {
		if err := tr.verifyTable(ctx, m.Database, tm); err != nil {
			return err
		}
	}
	return nil
}

// readLatest returns the set LATEST names at r.
func readLatest(r *remote) (string, error) {
	latest, err := r.readFile(r.join(latestName), 256)
	if errors.Is(err, os.ErrNotExist) {
		return "", red("no %s", latestName)
	} else if err != nil {
		return "", fmt.Errorf("read %s: %w", latestName, err)
	}
	set := strings.TrimSpace(string(latest))
	if !setName.MatchString(set) {
		return "", red("%s does not name a set", latestName)
	}
	return set, nil
}

// readManifest reads and checks the manifest of set at r.
func readManifest(r *remote, set string) (Manifest, error) {
	var m Manifest
	raw, err := r.readFile(r.join(set, manifestName), 64<<20)
	if errors.Is(err, os.ErrNotExist) {
		return m, red("set %s has no manifest", set)
	} else if err != nil {
		return m, fmt.Errorf("read the manifest of %s: %w", set, err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, red("the manifest of %s is not valid JSON", set)
	}
	if m.Set != set || m.Format != ManifestFormat {
		return m, red("the manifest of %s names set %q, format %d", set, m.Set, m.Format)
	}
	if len(m.Tables) == 0 {
		// A backup of nothing restores, and proves nothing.
		return m, red("the manifest of %s lists no table", set)
	}
	return m, nil
}

// verifyTable loads table tm of database db into the scratch database,
// checks it, and drops it: the scratch copy holds one table at a time.
func (tr *targetRun) verifyTable(ctx context.Context, db string, tm TableManifest) error {
	create, err := scratchCreate(tm, db, tr.scratch.name)
	if err != nil {
		return red("table %s: %v", tm.Name, err)
	}
	if err := tr.ch.exec(ctx, create); err != nil {
		return chRed("create table "+tm.Name, err)
	}
	if err := tr.checkSpace(ctx, tm); err != nil {
		return err
	}
	target := tr.scratch.table(tm.Name)
	for _, b := range tm.Blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := verifyBlob(ctx, tr.ch, tr.r, tr.ids, tr.set, tr.tmp, target, tm.Name, b); err != nil {
			return err
		}
		tr.tv.Blobs++
		tr.tv.Rows += b.Rows
		tr.tv.CipherBytes += b.CipherBytes
	}
	if err := tr.ch.exec(ctx, tr.scratch.dropTable(tm.Name)); err != nil {
		return fmt.Errorf("drop the scratch copy of %s: %w", tm.Name, err)
	}
	tr.tv.Tables++
	return nil
}

// scratchCreate is the manifest's statement for tm, checked, pointed at
// the scratch database and without its table TTL; the statement that
// will run is checked again, as the rewriting must not have changed what
// checkCreate found.
func scratchCreate(tm TableManifest, db, scratch string) (string, error) {
	if err := checkCreate(tm.Create); err != nil {
		return "", err
	}
	create, err := rewriteCreate(tm.Create, db, tm.Name, scratch)
	if err != nil {
		return "", err
	}
	if create, err = stripTableTTL(create); err != nil {
		return "", err
	}
	if err := checkCreate(create); err != nil {
		return "", err
	}
	return create, nil
}

// checkSpace refuses to load tm where ClickHouse reports too little room
// on the disks of its (empty) scratch table for the copy's estimated size
// (scratchSize); where it cannot tell, the table is loaded unchecked. Too
// little room is a plain error: the backup could not be checked, which
// says nothing about the backup.
func (tr *targetRun) checkSpace(ctx context.Context, tm TableManifest) error {
	disks, ok, err := tr.measure.tableSpace(ctx, tr.ch, tr.scratch.name, tm.Name)
	if err != nil || !ok {
		return err
	}
	live, err := liveTableSize(ctx, tr.ch, tr.live, tm.Name)
	if err != nil {
		return err
	}
	need, basis := scratchSize(tm, live)
	if err := checkRoom(tm.Name, need, basis, disks); err != nil {
		return err
	}
	tr.tv.SpaceChecked++
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
	// At most one byte past the manifest's size: a longer file is red
	// either way, and need not fill the local disk first.
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(src, max(b.CipherBytes, 0)+1))
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

// rewriteCreate points a CREATE TABLE statement of db.table, as SHOW
// CREATE TABLE prints it, at scratch. The name is followed by the column
// list: " (" on one line (older versions, 18.16 included), a newline and
// "(" one clause a line (current versions); whitespace as printed is kept. The name may be
// printed bare or quoted (backquotes, or double quotes where
// show_create_query_identifier_quoting_style says so), and followed by
// the table's UUID where show_table_uuid_in_table_create_query_if_not_nil
// is set: the UUID is dropped, as the live table holds it. Anything else
// there (IF NOT EXISTS, ON CLUSTER, another table) SHOW CREATE TABLE does
// not print for a MergeTree table db.table, and is refused.
func rewriteCreate(stmt, db, table, scratch string) (string, error) {
	rest, ok := strings.CutPrefix(stmt, "CREATE TABLE ")
	if !ok {
		return "", errors.New("the create statement is not a CREATE TABLE")
	}
	for _, d := range identForms(db) {
		for _, t := range identForms(table) {
			after, ok := strings.CutPrefix(rest, d+"."+t)
			if !ok {
				continue
			}
			if u := tableUUID.FindString(after); u != "" {
				after = after[len(u):]
			}
			if strings.HasPrefix(strings.TrimLeft(after, sqlSpace), "(") {
				return "CREATE TABLE " + quoteIdent(scratch) + "." + quoteIdent(table) + after, nil
			}
		}
	}
	return "", fmt.Errorf("the create statement does not name %s.%s", db, table)
}

// tableUUID is the UUID clause SHOW CREATE TABLE prints after the name
// when asked to.
var tableUUID = regexp.MustCompile(`^ UUID '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}'`)

// identForms are the ways ClickHouse may print an identifier: bare where
// it can be, in backquotes, in double quotes.
func identForms(s string) []string {
	quoted := []string{quoteIdent(s), `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`}
	if validIdent(s) {
		return append([]string{s}, quoted...)
	}
	return quoted
}
