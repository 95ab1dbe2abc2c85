package identity

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// NewRequestID returns a request id: 32 lower-case hex digits, the first
// 12 the Unix time in milliseconds and the rest 80 random bits (the layout
// of a UUIDv7 without its version bits).
//
// Time first because the id is the unique key of the audit log: ids made
// close in time sort close together, so PostgreSQL adds each to the
// rightmost, already cached leaf of the index instead of to a random page
// of a large one (random ids cost more CPU and WAL with every row the
// table holds). The random part keeps ids from one millisecond, and from
// several edges, apart; an id is not a secret.
func NewRequestID() string {
	var b [16]byte
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(time.Now().UnixMilli()))
	copy(b[:6], ms[2:])
	_, _ = rand.Read(b[6:])
	return hex.EncodeToString(b[:])
}
