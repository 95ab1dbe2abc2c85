package apikey

import (
	"encoding/hex"
	"hash/crc32"
	"math/big"
	"strings"
	"testing"
)

// Known answers, computed independently of this package from the format's
// definition (bytes -> big-endian integer -> base62; CRC32-IEEE of prefix
// and body mod 62^4), with HMAC-SHA256 under the pepper "p" x 32.
var vectors = []struct {
	kind Kind
	body [32]byte
	key  string
	hmac string
}{
	{Account, [32]byte{}, "gmk_acct_live_0000000000000000000000000000000000000000000_f2qS", "adc19ce5a3bc1ddfc76f71461dcf961879ae7260904d84ba3a6b09d89b415b6b"},
	{Account, allFF(), "gmk_acct_live_YHJSKWDa6oz1al1yMhwzwM8llg7hJNUca2J5RoW8xP1_IGnN", "25ce220ab43fe43c5b28405a009c21d83caed2791f1c132f8ea9ee83ae5f5a27"},
	{Account, counting(), "gmk_acct_live_003AuLtjc7TJLctqJ2Unu3mfAGcxg9lrkrCWgKbidLF_zfKj", "2df000a00e6431b8035e285cb4e8dfb4310da3b3fd63d7086c2132bd02ac914a"},
	{Collector, [32]byte{}, "gmk_cru_live_0000000000000000000000000000000000000000000_C2E3", "32bb588039276393ef164b91a5d96f10ab7f82da00106a628e65392c3117d068"},
	{Collector, allFF(), "gmk_cru_live_YHJSKWDa6oz1al1yMhwzwM8llg7hJNUca2J5RoW8xP1_AHD4", "736311d51a22602be825ec64b1bdb28c1cf8bf260c8e770e8bd867eb77a1d86b"},
	{Collector, counting(), "gmk_cru_live_003AuLtjc7TJLctqJ2Unu3mfAGcxg9lrkrCWgKbidLF_cmP0", "d835acbac4899aefd8adf88212d99eed6f5ad2293325b481bf8532fb5fe95322"},
}

func allFF() (b [32]byte) {
	for i := range b {
		b[i] = 0xff
	}
	return
}

func counting() (b [32]byte) {
	for i := range b {
		b[i] = byte(i)
	}
	return
}

var pepper = []byte(strings.Repeat("p", 32))

func TestKnownAnswers(t *testing.T) {
	for _, v := range vectors {
		key, err := FromBytes(v.kind, v.body)
		if err != nil || key != v.key {
			t.Errorf("FromBytes(%v, %x) = %q, %v; want %q", v.kind, v.body[:4], key, err, v.key)
		}
		p, err := Parse(v.key)
		if err != nil || p.Kind != v.kind || p.Last4 != v.key[len(v.key)-4:] {
			t.Errorf("Parse(%q) = %+v, %v", v.key, p, err)
		}
		h := Hash(pepper, v.key)
		if hex.EncodeToString(h[:]) != v.hmac {
			t.Errorf("Hash(%q) = %x, want %s", v.key, h, v.hmac)
		}
		hasher := NewHasher(pepper)
		for range 2 { // the second call reuses pooled state
			if got := hasher.Sum(v.key); got != h {
				t.Errorf("Hasher.Sum(%q) = %x, want %x", v.key, got, h)
			}
		}
		want, _ := hex.DecodeString(v.hmac)
		if !Verify(pepper, v.key, want) || Verify(pepper, v.key, want[:31]) || Verify([]byte("other"), v.key, want) {
			t.Errorf("Verify(%q) wrong", v.key)
		}
	}
}

func TestGenerateMintsParsableDistinctKeys(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		kind := Account
		if i%2 == 1 {
			kind = Collector
		}
		key, err := Generate(kind)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(key)
		if err != nil || p.Kind != kind {
			t.Fatalf("Parse(Generate(%v)) = %+v, %v for %q", kind, p, err, key)
		}
		if seen[key] {
			t.Fatal("duplicate key")
		}
		seen[key] = true
	}
}

func TestParseRefusesBadInput(t *testing.T) {
	good := vectors[2].key // gmk_acct_live_003Au..._zfKj
	body := good[len(PrefixAccount) : len(PrefixAccount)+43]
	cases := []struct {
		name string
		key  string
		want error
	}{
		{"empty", "", ErrPrefix},
		{"wrong prefix", "gmk_acct_test_" + good[len(PrefixAccount):], ErrPrefix},
		{"prefix alone", PrefixAccount, ErrLength},
		{"42-character body", PrefixAccount + body[1:] + "_zfKj", ErrLength},
		{"44-character body", PrefixAccount + "0" + body + "_zfKj", ErrLength},
		{"non-base62 byte in the body", PrefixAccount + body[:10] + "-" + body[11:] + "_zfKj", ErrChars},
		{"non-ASCII byte in the body", PrefixAccount + body[:10] + "\xff" + body[11:] + "_zfKj", ErrChars},
		{"missing separator", PrefixAccount + body + "-zfKj", ErrChars},
		{"checksum off by one character", good[:len(good)-1] + "k", ErrChecksum},
		{"non-base62 checksum", good[:len(good)-1] + "!", ErrChars},
		{"body changed, checksum kept", PrefixAccount + "1" + body[1:] + "_zfKj", ErrChecksum},
		{"account body under the collector prefix", PrefixCollector + body + "_zfKj", ErrChecksum},
		{"body above 2^256", PrefixAccount + "Z" + body[1:] + "_0000", ErrRange},
		{"trailing newline", good + "\n", ErrLength},
		{"leading space", " " + good, ErrPrefix},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.key); err != tc.want {
				t.Fatalf("Parse = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	good, bad := vectors[2].key, vectors[2].key[:len(vectors[2].key)-1]+"k"
	if n := testing.AllocsPerRun(100, func() { _, _ = Parse(good); _, _ = Parse(bad) }); n != 0 {
		t.Fatalf("Parse allocates %v times", n)
	}
}

func TestHasherDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops Puts under -race")
	}
	h := NewHasher(pepper)
	key := vectors[2].key
	want := Hash(pepper, key)
	if n := testing.AllocsPerRun(100, func() {
		if h.Sum(key) != want {
			t.Fatal("wrong sum")
		}
	}); n != 0 {
		t.Fatalf("Hasher.Sum allocates %v times", n)
	}
	// A long input is hashed right too, and does not grow the pooled buffer.
	long := strings.Repeat("k", 4*maxPooledKey)
	if h.Sum(long) != Hash(pepper, long) || h.Sum(key) != want {
		t.Fatal("wrong sum after a long input")
	}
}

// Parse accepts exactly the keys this package could have minted, checked
// here from the format's definition without its code: a known prefix, 43
// base62 characters whose number is below 2^256, "_", and 4 base62
// characters that are CRC32-IEEE of prefix and body modulo 62^4. An
// accepted key is FromBytes of its body's number; a refusal is one of the
// documented errors.
func FuzzParse(f *testing.F) {
	for _, v := range vectors {
		f.Add(v.key)
	}
	good := vectors[2].key
	body := good[len(PrefixAccount) : len(PrefixAccount)+43]
	for _, s := range []string{
		"", "gmk_acct_live_", "gmk_cru_live_0000000000000000000000000000000000000000000_C2E4",
		"gmk_acct_test_" + good[len(PrefixAccount):], PrefixAccount + body[1:] + "_zfKj", PrefixAccount + "0" + body + "_zfKj",
		PrefixAccount + body[:10] + "-" + body[11:] + "_zfKj", PrefixAccount + body[:10] + "\xff" + body[11:] + "_zfKj",
		PrefixAccount + body + "-zfKj", good[:len(good)-1] + "k", good[:len(good)-1] + "!", PrefixCollector + body + "_zfKj",
		PrefixAccount + "Z" + body[1:] + "_0000", good + "\n", " " + good,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		p, err := Parse(key)
		kind, n, ok := mintable(key)
		if err != nil {
			if ok {
				t.Fatalf("Parse(%q) refused a well-formed key: %v", key, err)
			}
			if err != ErrPrefix && err != ErrLength && err != ErrChars && err != ErrRange && err != ErrChecksum {
				t.Fatalf("Parse(%q): undocumented error %v", key, err)
			}
			return
		}
		if !ok {
			t.Fatalf("Parse(%q) = %+v, but it is not a key this package mints", key, p)
		}
		if p.Kind != kind || p.Last4 != key[len(key)-4:] {
			t.Fatalf("Parse(%q) = %+v, want kind %v", key, p, kind)
		}
		var b [32]byte
		n.FillBytes(b[:])
		if again, err := FromBytes(kind, b); err != nil || again != key {
			t.Fatalf("Parse(%q) accepted what FromBytes writes as %q (%v)", key, again, err)
		}
	})
}

// Every key FromBytes mints, from any 32 bytes, is well-formed by the
// format's definition and parses; the same key with one character
// changed parses only if it is well-formed too.
func FuzzFromBytesParses(f *testing.F) {
	for _, v := range vectors {
		f.Add(v.body[:], v.kind == Collector, uint8(0), uint8(1))
	}
	f.Fuzz(func(t *testing.T, body []byte, collector bool, pos, to uint8) {
		var b [32]byte
		copy(b[:], body)
		kind := Account
		if collector {
			kind = Collector
		}
		key, err := FromBytes(kind, b)
		if err != nil {
			t.Fatal(err)
		}
		if k, n, ok := mintable(key); !ok || k != kind || n.Cmp(new(big.Int).SetBytes(b[:])) != 0 {
			t.Fatalf("FromBytes(%v, %x) = %q, not well-formed", kind, b, key)
		}
		if p, err := Parse(key); err != nil || p.Kind != kind {
			t.Fatalf("Parse(FromBytes(%v, %x)) = %+v, %v", kind, b, p, err)
		}
		i := int(pos) % len(key)
		changed := key[:i] + string(rune(to%128)) + key[i+1:]
		if _, _, ok := mintable(changed); (parseErr(changed) == nil) != ok {
			t.Fatalf("%q, changed from %q: Parse says %v, the definition %v", changed, key, parseErr(changed), ok)
		}
	})
}

// parseErr is the error of Parse alone.
func parseErr(key string) error { _, err := Parse(key); return err }

// mintable checks key against the format's definition, with math/big and
// hash/crc32 rather than this package's code: its kind and body's number,
// and whether it is a key at all.
func mintable(key string) (Kind, *big.Int, bool) {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	kind, rest := Account, strings.TrimPrefix(key, "gmk_acct_live_")
	if rest == key {
		kind, rest = Collector, strings.TrimPrefix(key, "gmk_cru_live_")
		if rest == key {
			return 0, nil, false
		}
	}
	if len(rest) != 43+1+4 || rest[43] != '_' {
		return 0, nil, false
	}
	number := func(s string) (*big.Int, bool) {
		n := new(big.Int)
		for _, c := range []byte(s) {
			d := strings.IndexByte(digits, c)
			if d < 0 {
				return nil, false
			}
			n.Mul(n, big.NewInt(62)).Add(n, big.NewInt(int64(d)))
		}
		return n, true
	}
	n, ok := number(rest[:43])
	if !ok || n.BitLen() > 256 {
		return 0, nil, false
	}
	sum, ok := number(rest[44:])
	want := crc32.ChecksumIEEE([]byte(key[:len(key)-5])) % (62 * 62 * 62 * 62)
	return kind, n, ok && sum.IsUint64() && sum.Uint64() == uint64(want)
}

func BenchmarkParseValid(b *testing.B) {
	key := vectors[2].key
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Parse(key)
	}
}

func BenchmarkParseMalformed(b *testing.B) {
	key := vectors[2].key[:40]
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Parse(key)
	}
}

func BenchmarkHasher(b *testing.B) {
	key, h := vectors[2].key, NewHasher(pepper)
	b.ReportAllocs()
	for b.Loop() {
		_ = h.Sum(key)
	}
}

func BenchmarkHash(b *testing.B) {
	key := vectors[2].key
	b.ReportAllocs()
	for b.Loop() {
		_ = Hash(pepper, key)
	}
}
