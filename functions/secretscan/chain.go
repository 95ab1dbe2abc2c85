package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// chain is this process's audit hash chain (shared/audit): the rows of
// the keys it revokes are linked like the edge's, under a writer id of
// their own, so verify finds an edit, insertion or deletion among them
// too.
type chain struct {
	// turn is held (a value in it) by the one revocation whose rows are
	// taking the chain's next places, from its inserts to its commit.
	turn chan struct{}
	base string // id of the chain's first generation
	gen  int
	id   string
	seq  int64
	prev []byte
	// next and nextPrev are the chain's end once the transaction in
	// progress commits.
	next     int64
	nextPrev []byte
}

func newChain() *chain {
	var b [6]byte
	_, _ = rand.Read(b[:])
	base := "secretscan-" + hex.EncodeToString(b[:])
	return &chain{turn: make(chan struct{}, 1), base: base, id: base}
}

// lock waits for the chain's turn, or for ctx: a revocation that waits
// must not wait past its own time for one held up by a slow database.
func (c *chain) lock(ctx context.Context) error {
	select {
	case c.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the audit chain: %w", context.Cause(ctx))
	}
}

func (c *chain) unlock() { <-c.turn }

// restart begins a new generation after a transaction whose commit is
// not known for certain: its places are never used again.
func (c *chain) restart() {
	c.gen++
	c.id, c.seq, c.prev = fmt.Sprintf("%s.%d", c.base, c.gen), 0, nil
}
