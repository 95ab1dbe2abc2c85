package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
)

// chain is this process's audit hash chain (shared/audit): the rows of
// the keys it revokes are linked like the edge's, under a writer id of
// their own, so verify finds an edit, insertion or deletion among them
// too.
type chain struct {
	mu   sync.Mutex
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
	return &chain{base: base, id: base}
}

// restart begins a new generation after a transaction whose commit is
// not known for certain: its places are never used again.
func (c *chain) restart() {
	c.gen++
	c.id, c.seq, c.prev = fmt.Sprintf("%s.%d", c.base, c.gen), 0, nil
}
