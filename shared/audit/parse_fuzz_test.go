package audit

import (
	"bufio"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"testing"
)

var reasonList = []string{"content", "link", "gap", "rewritten", "truncated", "displaced", "customer"}

// A break's entry, as a red run prints it, reads back as that break and no
// other, a comment after it or not; and a list ParseAccepted takes holds
// only well-formed entries, which print and read back as the same list. A
// list it refuses gives no entries and names the line.
func FuzzParseAccepted(f *testing.F) {
	f.Add("# investigated\n\na1b2c3-0 2 content 02 03   # restored\na1b2c3-0.2 6 rewritten 01 ABCD\n", "a1b2c3-0.2", int64(6), uint8(3), []byte{1}, []byte{0xab, 0xcd})
	f.Add("a1b2c3-1 9 displaced - -\nx:772037206761702023 2 gap - 04\nx:- 1 gap - 05\n", "w 7 gap #", int64(2), uint8(2), []byte(nil), []byte{4})
	f.Add("a1b2c3-0 1 gap - ab\na1b2c3-0 0 content ab cd\n", "", int64(1), uint8(2), []byte(nil), []byte{5})
	f.Add("x:zz 2 gap - ab\nx: 2 gap - ab\na1b2c3-0 6 rewritten abc cd\n", "x:-", int64(math.MaxInt64), uint8(6), []byte{0}, []byte(nil))
	f.Add("a1b2c3-0 2 content ab cd ef\r\n", "x:41", int64(-1), uint8(0), []byte("\n#"), []byte{0xff})
	f.Fuzz(func(t *testing.T, list, writer string, seq int64, reason uint8, prev, hash []byte) {
		if seq = seq & math.MaxInt64; seq == 0 {
			seq = 1
		}
		b := Break{WriterID: writer, WriterSeq: seq, Reason: reasonList[int(reason)%len(reasonList)], Prev: prev, Hash: hash}
		entry := b.Entry()
		if fields := strings.Fields(entry); len(fields) != 5 || strings.ContainsAny(entry, "\r\n#") {
			t.Fatalf("%+v: entry %q is not one line of five fields", b, entry)
		}
		if len(entry) < bufio.MaxScanTokenSize-16 {
			for _, text := range []string{entry, entry + "\n", "\n" + entry + "  # why\r\n"} {
				a, err := ParseAccepted(strings.NewReader(text))
				if err != nil || len(a) != 1 || !a.Has(b) {
					t.Fatalf("%+v: %q reads as %v (%v)", b, text, a, err)
				}
				other := b
				other.WriterID += "0"
				if a.Has(other) {
					t.Fatalf("%q accepts the writer %q too", text, other.WriterID)
				}
				other = b
				other.WriterSeq = seq%math.MaxInt64 + 1
				if a.Has(other) {
					t.Fatalf("%q accepts seq %d too", text, other.WriterSeq)
				}
			}
		}

		a, err := ParseAccepted(strings.NewReader(list))
		if err != nil {
			if a != nil || !(strings.HasPrefix(err.Error(), "line ") || strings.HasPrefix(err.Error(), "accepted breaks: ")) {
				t.Fatalf("%q: %v, error %v", list, a, err)
			}
			return
		}
		if len(a) > strings.Count(list, "\n")+1 {
			t.Fatalf("%q: %d entries from fewer lines", list, len(a))
		}
		var again strings.Builder
		for k := range a {
			if k.seq < 1 || !reasons[k.reason] || !lowerHex(k.prev) || !lowerHex(k.hash) {
				t.Fatalf("%q: accepted the malformed entry %+v", list, k)
			}
			p, _ := hex.DecodeString(k.prev)
			h, _ := hex.DecodeString(k.hash)
			again.WriteString(Break{WriterID: k.writer, WriterSeq: k.seq, Reason: k.reason, Prev: p, Hash: h}.Entry() + "\n")
		}
		back, err := ParseAccepted(strings.NewReader(again.String()))
		if err != nil || len(back) != len(a) {
			t.Fatalf("%q printed as %q reads back as %v (%v)", list, again.String(), back, err)
		}
		for k := range a {
			if !back[k] {
				t.Fatalf("%q printed as %q loses %+v", list, again.String(), k)
			}
		}
	})
}

// lowerHex reports whether s is "" or lower-case hex of whole bytes.
func lowerHex(s string) bool {
	if len(s)%2 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// Every DisplacedID of a writer reads back as that writer and seq; and an
// id ParseDisplaced takes is the writer it names, "!", the seq in decimal,
// "-" and a name in hex, with no "!" after the writer.
func FuzzParseDisplaced(f *testing.F) {
	for _, id := range []string{"a1b2c3.2!41-deadbeef0001", "a1b2c3.2!41-deadbeef0001!1-07", "", "a1b2c3", "!1-ab", "w!", "w!1", "w!1-", "w!x-ab",
		"w!0-ab", "w!-1-ab", "w!1-zz", "w!1-abc", "w!+1-AB", "w!9223372036854775808-ab"} {
		f.Add(id, "a1b2c3.2", int64(41), []byte{0xde, 0xad})
	}
	f.Add("", "w!1-ab", int64(1), []byte{7})
	f.Add("", "", int64(0), []byte(nil))
	f.Fuzz(func(t *testing.T, id, writer string, seq int64, name []byte) {
		if writer != "" && seq >= 1 && len(name) > 0 {
			d := DisplacedID(writer, seq, name)
			if w, s, ok := ParseDisplaced(d); !ok || w != writer || s != seq {
				t.Fatalf("DisplacedID(%q, %d, %x) = %q reads as %q, %d, %v", writer, seq, name, d, w, s, ok)
			}
		}

		w, s, ok := ParseDisplaced(id)
		if !ok {
			if w != "" || s != 0 {
				t.Fatalf("ParseDisplaced(%q) refused with %q, %d", id, w, s)
			}
			return
		}
		rest, found := strings.CutPrefix(id, w+"!")
		n, h, dash := strings.Cut(rest, "-")
		decoded, err := hex.DecodeString(h)
		parsed, perr := strconv.ParseInt(n, 10, 64)
		if w == "" || s < 1 || !found || strings.Contains(rest, "!") || !dash || err != nil || len(decoded) == 0 || perr != nil || parsed != s {
			t.Fatalf("ParseDisplaced(%q) = %q, %d: not a DisplacedID", id, w, s)
		}
		if w2, s2, ok := ParseDisplaced(DisplacedID(w, s, decoded)); !ok || w2 != w || s2 != s {
			t.Fatalf("%q as DisplacedID reads as %q, %d, %v", id, w2, s2, ok)
		}
	})
}
