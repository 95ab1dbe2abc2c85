// Package apikey mints, parses and hashes Guardian API keys.
//
// Format (ARCHITECTURE §2): "gmk_acct_live_" (account) or "gmk_cru_live_"
// (collector), then a 43-character body, "_", and a 4-character checksum.
// The body is 32 bytes from crypto/rand read as a big-endian number and
// written in base62 (0-9, a-z, A-Z, in that order of value), left-padded
// with "0". The checksum is CRC32-IEEE of prefix and body, modulo 62^4, as
// 4 base62 digits; it is the "last 4" the dashboard shows.
//
// Parse checks all of that without I/O or allocation, so malformed keys and
// typos are refused before any database work. Keys are stored only as
// HMAC-SHA256(pepper, key).
package apikey

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"math/big"
	"strings"
	"sync"
)

// Kind is the kind of key.
type Kind uint8

// Kinds of key.
const (
	Account   Kind = iota + 1 // account key with a scope
	Collector                 // server-bound collector key
)

// String returns the kind's name as stored in the database.
func (k Kind) String() string {
	switch k {
	case Account:
		return "account"
	case Collector:
		return "collector"
	}
	return "unknown"
}

// Prefixes of the two kinds.
const (
	PrefixAccount   = "gmk_acct_live_"
	PrefixCollector = "gmk_cru_live_"
)

const (
	bodyLen     = 43
	checksumLen = 4
	alphabet    = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	// maxBody is 2^256-1 in base62: no 32-byte body is larger.
	maxBody = "YHJSKWDa6oz1al1yMhwzwM8llg7hJNUca2J5RoW8xP1"
	// MaxLen is the length of the longest key (an account key).
	MaxLen = len(PrefixAccount) + bodyLen + 1 + checksumLen
)

// Parse errors. They are for logs and metrics; clients get one answer for
// every invalid key.
var (
	ErrPrefix   = errors.New("api key: unknown prefix")
	ErrLength   = errors.New("api key: wrong length")
	ErrChars    = errors.New("api key: character outside base62")
	ErrRange    = errors.New("api key: body larger than 256 bits")
	ErrChecksum = errors.New("api key: checksum mismatch")
)

// digit maps a byte to its base62 value, or 255.
var digit = func() (d [256]byte) {
	for i := range d {
		d[i] = 255
	}
	for i := 0; i < len(alphabet); i++ {
		d[alphabet[i]] = byte(i)
	}
	return d
}()

// Parsed is what Parse learns from a well-formed key.
type Parsed struct {
	Kind  Kind
	Last4 string // a substring of the key: no allocation
}

// Parse validates key's format and checksum without I/O. It does not say
// whether the key exists.
func Parse(key string) (Parsed, error) {
	var kind Kind
	var prefix string
	switch {
	case strings.HasPrefix(key, PrefixAccount):
		kind, prefix = Account, PrefixAccount
	case strings.HasPrefix(key, PrefixCollector):
		kind, prefix = Collector, PrefixCollector
	default:
		return Parsed{}, ErrPrefix
	}
	if len(key) != len(prefix)+bodyLen+1+checksumLen {
		return Parsed{}, ErrLength
	}
	body := key[len(prefix) : len(prefix)+bodyLen]
	if key[len(prefix)+bodyLen] != '_' {
		return Parsed{}, ErrChars
	}
	sum := key[len(key)-checksumLen:]
	// Fixed width: comparing digit by digit compares the numbers.
	cmp := 0
	for i := 0; i < bodyLen; i++ {
		v := digit[body[i]]
		if v == 255 {
			return Parsed{}, ErrChars
		}
		if cmp == 0 {
			if m := digit[maxBody[i]]; v > m {
				cmp = 1
			} else if v < m {
				cmp = -1
			}
		}
	}
	if cmp > 0 {
		return Parsed{}, ErrRange
	}
	var got uint32
	for i := 0; i < checksumLen; i++ {
		v := digit[sum[i]]
		if v == 255 {
			return Parsed{}, ErrChars
		}
		got = got*62 + uint32(v)
	}
	if got != checksum(key[:len(prefix)+bodyLen]) {
		return Parsed{}, ErrChecksum
	}
	return Parsed{Kind: kind, Last4: sum}, nil
}

// checksum is CRC32-IEEE of head modulo 62^4, computed over the string in
// place: converting to []byte for hash/crc32 would allocate per request.
func checksum(head string) uint32 {
	crc := ^uint32(0)
	for i := 0; i < len(head); i++ {
		crc = crc32.IEEETable[byte(crc)^head[i]] ^ (crc >> 8)
	}
	return ^crc % (62 * 62 * 62 * 62)
}

// Generate mints a new key of kind from 32 bytes of crypto/rand.
func Generate(kind Kind) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("api key: random: %w", err)
	}
	return FromBytes(kind, b)
}

// FromBytes builds the key of kind whose body is b. Generate is the way to
// mint keys; this exists for known-answer tests and other implementations.
func FromBytes(kind Kind, b [32]byte) (string, error) {
	var prefix string
	switch kind {
	case Account:
		prefix = PrefixAccount
	case Collector:
		prefix = PrefixCollector
	default:
		return "", fmt.Errorf("api key: unknown kind %d", kind)
	}
	var sb strings.Builder
	sb.Grow(len(prefix) + bodyLen + 1 + checksumLen)
	sb.WriteString(prefix)
	sb.WriteString(base62(new(big.Int).SetBytes(b[:]), bodyLen))
	sum := checksum(sb.String())
	sb.WriteByte('_')
	sb.WriteString(base62(big.NewInt(int64(sum)), checksumLen))
	return sb.String(), nil
}

// base62 writes n in base62, left-padded with "0" to width.
func base62(n *big.Int, width int) string {
	out := make([]byte, width)
	for i := range out {
		out[i] = '0'
	}
	base := big.NewInt(62)
	mod := new(big.Int)
	n = new(big.Int).Set(n)
	for i := width - 1; i >= 0 && n.Sign() > 0; i-- {
		n.DivMod(n, base, mod)
		out[i] = alphabet[mod.Int64()]
	}
	return string(out)
}

// Hasher computes Hash for one pepper, reusing HMAC state across calls:
// safe for concurrent use, and free of allocations on the request path.
type Hasher struct{ pool sync.Pool }

// hmacState is one pooled HMAC with the buffers a call needs, so that
// neither the key's bytes nor the sum escape to the heap.
type hmacState struct {
	mac hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

// maxPooledKey bounds the key buffer kept in the pool: a longer input is
// hashed as well, with a buffer that is then dropped.
const maxPooledKey = 256

// NewHasher returns a Hasher for pepper.
func NewHasher(pepper []byte) *Hasher {
	p := append([]byte(nil), pepper...)
	return &Hasher{pool: sync.Pool{New: func() any {
		return &hmacState{mac: hmac.New(sha256.New, p), buf: make([]byte, 0, 64)}
	}}}
}

// Sum returns HMAC-SHA256(pepper, key).
func (h *Hasher) Sum(key string) [32]byte {
	s := h.pool.Get().(*hmacState)
	s.mac.Reset()
	s.buf = append(s.buf[:0], key...)
	s.mac.Write(s.buf)
	clear(s.buf)
	out := [32]byte(s.mac.Sum(s.sum[:0]))
	s.mac.Reset() // the key does not linger in the pool (nor in SHA-256's block buffer)
	if cap(s.buf) <= maxPooledKey {
		h.pool.Put(s)
	}
	return out
}

// Hash returns HMAC-SHA256(pepper, key): what the database stores.
func Hash(pepper []byte, key string) [32]byte {
	m := hmac.New(sha256.New, pepper)
	m.Write([]byte(key))
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// Verify reports in constant time whether key hashes to stored.
func Verify(pepper []byte, key string, stored []byte) bool {
	h := Hash(pepper, key)
	return hmac.Equal(h[:], stored)
}
