package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/account"
	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/stepup"
)

// IdempotencyWindow is how long an Idempotency-Key binds its request: a
// key older than this is taken as new, so an agent that always sends
// "enroll-<machine_id>" can enroll again with another body later.
const IdempotencyWindow = "24 hours"

// Revocation reasons stored in api_keys.revoked_reason.
const (
	reasonReenrolled = "reenrolled"
	reasonRotated    = "rotated"
)

// maxAttempts bounds the retries of a transaction that lost a race.
const maxAttempts = 5

var (
	errIdempotencyReused = errors.New("servers: Idempotency-Key reused with another body")
	errNoServer          = errors.New("servers: no such server")
	// errRetry is a race lost to a concurrent request: run again.
	errRetry = errors.New("servers: retry")
)

// store runs the transactions that mint collector keys.
type store struct {
	db     *pgxpool.Pool
	hasher *apikey.Hasher
	// maxServers is the most servers a customer may have enrolled
	// (plan.MaxServers).
	maxServers int
}

// errServerLimit is a first enrolment refused at the customer's bound.
var errServerLimit = errors.New("servers: the account has as many servers as it may")

// Enrolled is the outcome of one enrollment.
type Enrolled struct {
	ServerID, Name string
	Key, KeyID     string // Key is the plaintext, for the answer only
	Reenrolled     bool   // an existing server got a fresh key
	Replayed       bool   // found by its Idempotency-Key
	Revoked        int64  // earlier collector keys revoked
}

// Rotated is the outcome of a key rotation.
type Rotated struct {
	Key, KeyID  string
	RotatedFrom *string
	Revoked     int64
}

// inTx runs fn in one transaction, again when it lost a race (a
// serialization failure, a deadlock, or a row that vanished between two
// statements).
func (s *store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := pgx.BeginFunc(ctx, s.db, fn)
		if err == nil || attempt == maxAttempts || !retryable(err) {
			if errors.Is(err, errRetry) {
				return fmt.Errorf("servers: gave up after %d attempts", attempt)
			}
			return err
		}
	}
}

func retryable(err error) bool {
	if errors.Is(err, errRetry) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40001", "40P01", "23505": // serialization failure, deadlock, unique violation
			return true
		}
	}
	return false
}

const (
	claimIdempotencyKey = `INSERT INTO idempotency_keys (customer_id, key, request_hash) VALUES ($1, $2, $3)
ON CONFLICT (customer_id, key) DO NOTHING`
	// An expired record is renewed in place for this request.
	readIdempotencyKey = `SELECT request_hash, server_id::text, created_at < now() - interval '` + IdempotencyWindow + `'
FROM idempotency_keys WHERE customer_id = $1 AND key = $2 FOR UPDATE`
	renewIdempotencyKey = `UPDATE idempotency_keys SET request_hash = $3, server_id = NULL, created_at = now()
WHERE customer_id = $1 AND key = $2`
	bindIdempotencyKey = `UPDATE idempotency_keys SET server_id = $3 WHERE customer_id = $1 AND key = $2`

	lockServer      = `SELECT name FROM servers WHERE id = $1 AND customer_id = $2 FOR UPDATE`
	selectMachineID = `SELECT machine_id FROM servers WHERE id = $1 AND customer_id = $2`

	insertServer = `INSERT INTO servers (customer_id, name, hostname, machine_id, tags) VALUES ($1, $2, $3, nullif($4, ''), $5)
ON CONFLICT (customer_id, machine_id) DO NOTHING RETURNING id, name`
	lockCustomerServers = `SELECT pg_advisory_xact_lock(hashtextextended('guardian.servers:' || $1, 0))`
	knownMachine        = `SELECT EXISTS (SELECT 1 FROM servers WHERE customer_id = $1 AND machine_id = $2)`
	countServers        = `SELECT count(*), coalesce(bool_or(machine_id = nullif($2, '')), false) FROM servers WHERE customer_id = $1`
	lockServerByMachine = `SELECT id, name FROM servers WHERE customer_id = $1 AND machine_id = $2 FOR UPDATE`
	updateHostname      = `UPDATE servers SET hostname = $2 WHERE id = $1 AND hostname <> $2`

	// revokeCollectorKeys stops every collector key of a server that still
	// works (or would, until a rotation's grace ends), and names the newest
	// for rotated_from. A key revoked otherwise is left as it is: so is it
	// when a concurrent enrolment revoked it after this transaction began
	// (its revoked_at then lies after this one's now()), which the
	// database's trigger would refuse to relabel (0028).
	revokeCollectorKeys = `WITH r AS (
	UPDATE api_keys SET revoked_at = now(), revoked_reason = $2
	WHERE server_id = $1 AND kind = 'collector' AND (revoked_at IS NULL OR (revoked_reason = 'rotated' AND revoked_at > now()))
	RETURNING id, created_at)
SELECT count(*), (SELECT id::text FROM r ORDER BY created_at DESC, id DESC LIMIT 1) FROM r`

	insertCollectorKey = `INSERT INTO api_keys (customer_id, kind, server_id, name, key_hash, last4, created_by, rotated_from)
VALUES ($1, 'collector', $2, $3, $4, $5, $6, $7) RETURNING id`
)

// Enroll creates the server of req (or finds the one its machine_id or
// Idempotency-Key names) and mints its collector key, in one transaction.
// Concurrent identical enrollments meet on the idempotency_keys primary
// key or on the servers (customer_id, machine_id) unique constraint: the
// first creates the server, the others wait for it and re-enroll it.
func (s *store) Enroll(ctx context.Context, id identity.Identity, req Enrollment, idemKey string) (Enrolled, error) {
	hash := req.Hash()
	var out Enrolled
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = Enrolled{}
		if err := account.LockOpen(ctx, tx, id.CustomerID); err != nil {
			return err
		}
		if err := stepup.LockSession(ctx, tx, id); err != nil {
			return err
		}
		if idemKey != "" {
			if err := s.claim(ctx, tx, id.CustomerID, idemKey, req.MachineID, hash, &out); err != nil {
				return err
			}
		}
		if out.ServerID == "" {
			if err := s.findOrCreate(ctx, tx, id.CustomerID, req, &out); err != nil {
				return err
			}
		}
		if out.Reenrolled {
			if _, err := tx.Exec(ctx, updateHostname, out.ServerID, req.Hostname); err != nil {
				return err
			}
		}
		var err error
		var from *string
		if out.Revoked, from, err = revoke(ctx, tx, out.ServerID, reasonReenrolled); err != nil {
			return err
		}
		if out.Key, out.KeyID, err = s.mint(ctx, tx, id, out.ServerID, out.Name, from); err != nil {
			return err
		}
		if idemKey != "" {
			_, err = tx.Exec(ctx, bindIdempotencyKey, id.CustomerID, idemKey, out.ServerID)
		}
		return err
	})
	return out, err
}

// claim records idemKey for this request, or finds the server an earlier
// request with the same key and body made (out.ServerID set, a
// re-enrollment). Another body under the same key is refused, unless both
// name the same machine_id: collector agents send the key
// enroll-<machine_id> on every enrollment, and enrolling a machine again
// with a new hostname or tags is a re-enrollment (the contract), so the
// record takes the new body and findOrCreate finds the server by its
// machine_id.
func (s *store) claim(ctx context.Context, tx pgx.Tx, customerID, idemKey, machineID string, hash []byte, out *Enrolled) error {
	tag, err := tx.Exec(ctx, claimIdempotencyKey, customerID, idemKey, hash)
	if err != nil || tag.RowsAffected() == 1 {
		return err
	}
	// Taken: by a committed request (a concurrent one was waited for).
	var stored []byte
	var serverID *string
	var expired bool
	err = tx.QueryRow(ctx, readIdempotencyKey, customerID, idemKey).Scan(&stored, &serverID, &expired)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return errRetry // its server was deleted meanwhile
	case err != nil:
		return err
	case expired:
		_, err = tx.Exec(ctx, renewIdempotencyKey, customerID, idemKey, hash)
		return err
	case !bytes.Equal(stored, hash):
		if same, err := sameMachine(ctx, tx, customerID, serverID, machineID); err != nil || !same {
			return cmp.Or(err, errIdempotencyReused)
		}
		_, err = tx.Exec(ctx, renewIdempotencyKey, customerID, idemKey, hash)
		return err
	case serverID == nil:
		return nil // cannot outlive its transaction; enroll afresh
	}
	err = tx.QueryRow(ctx, lockServer, *serverID, customerID).Scan(&out.Name)
	if errors.Is(err, pgx.ErrNoRows) {
		return errRetry
	}
	out.ServerID, out.Reenrolled, out.Replayed = *serverID, true, true
	return err
}

// sameMachine reports whether a request for machineID may take over an
// idempotency record bound to serverID: the record's server is that
// machine's, or is gone (it was deleted; the request enrolls afresh).
func sameMachine(ctx context.Context, tx pgx.Tx, customerID string, serverID *string, machineID string) (bool, error) {
	if machineID == "" {
		return false, nil
	}
	if serverID == nil {
		return true, nil
	}
	var m *string
	err := tx.QueryRow(ctx, selectMachineID, *serverID, customerID).Scan(&m)
	if errors.Is(err, pgx.ErrNoRows) {
		return true, nil
	}
	return err == nil && m != nil && *m == machineID, err
}

// findOrCreate inserts the server, or locks the customer's server with
// the same machine_id (a re-enrollment).
func (s *store) findOrCreate(ctx context.Context, tx pgx.Tx, customerID string, req Enrollment, out *Enrolled) error {
	// A known machine enrolling again (as agents do) adds no server, so it
	// neither takes the customer's lock nor counts: a fleet re-enrolling
	// at once does not queue behind one lock.
	known := false
	if req.MachineID != "" {
		if err := tx.QueryRow(ctx, knownMachine, customerID, req.MachineID).Scan(&known); err != nil {
			return err
		}
	}
	if !known {
		if err := s.underServerLimit(ctx, tx, customerID, req.MachineID); err != nil {
			return err
		}
	}
	err := tx.QueryRow(ctx, insertServer, customerID, req.Name, req.Hostname, req.MachineID, req.Tags).Scan(&out.ServerID, &out.Name)
	if err == nil && known {
		// The machine's server was deleted since: this made a server
		// without the bound's check. Start over, counting.
		return errRetry
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	// machine_id conflict: the server exists (a concurrent first enrollment
	// has committed by now; INSERT waited for it).
	err = tx.QueryRow(ctx, lockServerByMachine, customerID, req.MachineID).Scan(&out.ServerID, &out.Name)
	if errors.Is(err, pgx.ErrNoRows) {
		return errRetry // deleted meanwhile
	}
	out.Reenrolled = true
	return err
}

// underServerLimit returns errServerLimit if customerID has s.maxServers
// servers already and machineID names none of them (enrolling a known
// machine again adds no server). It first takes a transaction-scoped lock
// per customer, so two first enrolments cannot both see room for one;
// every enrolment takes it at this point, after its Idempotency-Key's
// row, and the replay of a recorded key never takes it.
func (s *store) underServerLimit(ctx context.Context, tx pgx.Tx, customerID, machineID string) error {
	if _, err := tx.Exec(ctx, lockCustomerServers, customerID); err != nil {
		return fmt.Errorf("servers: lock the customer's servers: %w", err)
	}
	var n int
	var known bool
	if err := tx.QueryRow(ctx, countServers, customerID, machineID).Scan(&n, &known); err != nil {
		return fmt.Errorf("servers: count the customer's servers: %w", err)
	}
	if n >= s.maxServers && !known {
		return errServerLimit
	}
	return nil
}

func revoke(ctx context.Context, tx pgx.Tx, serverID, reason string) (int64, *string, error) {
	var n int64
	var newest *string
	err := tx.QueryRow(ctx, revokeCollectorKeys, serverID, reason).Scan(&n, &newest)
	return n, newest, err
}

// mint stores a new collector key for serverID and returns it with its id.
func (s *store) mint(ctx context.Context, tx pgx.Tx, id identity.Identity, serverID, serverName string, rotatedFrom *string) (string, string, error) {
	key, err := apikey.Generate(apikey.Collector)
	if err != nil {
		return "", "", err
	}
	sum := s.hasher.Sum(key)
	var creator *string
	if id.UserID != "" {
		creator = &id.UserID
	}
	name := "collector: " + serverName
	if utf8.RuneCountInString(name) > MaxName {
		name = string([]rune(name)[:MaxName])
	}
	var keyID string
	err = tx.QueryRow(ctx, insertCollectorKey, id.CustomerID, serverID, name, sum[:], key[len(key)-4:], creator, rotatedFrom).Scan(&keyID)
	return key, keyID, err
}

// Rotate mints a new collector key for the customer's server and revokes
// its earlier ones, at once.
func (s *store) Rotate(ctx context.Context, id identity.Identity, serverID string) (Rotated, error) {
	var out Rotated
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = Rotated{}
		if err := account.LockOpen(ctx, tx, id.CustomerID); err != nil {
			return err
		}
		if err := stepup.LockSession(ctx, tx, id); err != nil {
			return err
		}
		var name string
		err := tx.QueryRow(ctx, lockServer, serverID, id.CustomerID).Scan(&name)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNoServer
		}
		if err != nil {
			return err
		}
		if out.Revoked, out.RotatedFrom, err = revoke(ctx, tx, serverID, reasonRotated); err != nil {
			return err
		}
		out.Key, out.KeyID, err = s.mint(ctx, tx, id, serverID, name, out.RotatedFrom)
		return err
	})
	return out, err
}
