package audit

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Accepted is the set of breaks an operator has investigated and
// accepted (ParseAccepted). The log is append-only, so a break stays for
// good; verify lists an accepted one in Report.Accepted instead of
// Report.Breaks and walks on past it, so that the rest of its chain, and
// every other chain, is still checked.
type Accepted map[acceptedKey]bool

// acceptedKey is what an entry names: a break's writer, sequence and
// reason, and the hashes it is pinned to (Break.Prev and Break.Hash, in
// hex; "" for none).
type acceptedKey struct {
	writer string
	seq    int64
	reason string
	prev   string
	hash   string
}

func keyOf(b Break) acceptedKey {
	return acceptedKey{writer: b.WriterID, seq: b.WriterSeq, reason: b.Reason, prev: hex.EncodeToString(b.Prev), hash: hex.EncodeToString(b.Hash)}
}

// Has reports whether b is accepted.
func (a Accepted) Has(b Break) bool { return a[keyOf(b)] }

// Entry is b as a line of an accepted-breaks list: its writer id (as
// x:<hex> when it holds anything but letters, digits and ._!:-, so that
// no id can read as more fields or a comment), sequence, reason, and the
// hashes it is pinned to, in hex ("-" for none).
func (b Break) Entry() string {
	return entryWriter(b.WriterID) + " " + strconv.FormatInt(b.WriterSeq, 10) + " " + b.Reason + " " + hexOrDash(b.Prev) + " " + hexOrDash(b.Hash)
}

func hexOrDash(h []byte) string {
	if len(h) == 0 {
		return "-"
	}
	return hex.EncodeToString(h)
}

func entryWriter(w string) string {
	if w == "" {
		return "x:-" // a writer id of nothing (no edge writes one)
	}
	safe := !strings.HasPrefix(w, "x:")
	for i := 0; safe && i < len(w); i++ {
		c := w[i]
		safe = c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("._!:-", c) >= 0
	}
	if safe {
		return w
	}
	return "x:" + hex.EncodeToString([]byte(w))
}

// reasons are the Break reasons a list may accept.
var reasons = map[string]bool{"content": true, "link": true, "gap": true, "rewritten": true, "truncated": true, "displaced": true, "customer": true}

// ParseAccepted reads a list of accepted breaks, one a line as
// Break.Entry writes it: writer id, sequence, reason, and the two hashes
// the break is pinned to ("a1b2c3d4e5f6-0 17 content 9f2c… 41d0…"). Blank
// lines and text after a # are ignored. A line that is not such an entry
// is an error naming it, so that a typo cannot quietly accept nothing.
func ParseAccepted(r io.Reader) (Accepted, error) {
	a := Accepted{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		k, err := acceptedEntry(f)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		a[k] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("accepted breaks: %w", err)
	}
	return a, nil
}

func acceptedEntry(f []string) (acceptedKey, error) {
	if len(f) != 5 {
		return acceptedKey{}, fmt.Errorf("want writer id, seq, reason and two hashes (as a red run prints them), found %d field(s)", len(f))
	}
	k := acceptedKey{writer: f[0], reason: f[2]}
	if f[0] == "x:-" {
		k.writer = ""
	} else if w, ok := strings.CutPrefix(f[0], "x:"); ok {
		b, err := hex.DecodeString(w)
		if err != nil || len(b) == 0 {
			return acceptedKey{}, fmt.Errorf("writer id %q is not x: and hex", f[0])
		}
		k.writer = string(b)
	}
	var err error
	if k.seq, err = strconv.ParseInt(f[1], 10, 64); err != nil || k.seq < 1 {
		return acceptedKey{}, fmt.Errorf("seq %q is not a positive integer", f[1])
	}
	if !reasons[k.reason] {
		return acceptedKey{}, fmt.Errorf("unknown reason %q", k.reason)
	}
	for i, dst := range []*string{&k.prev, &k.hash} {
		if f[3+i] == "-" {
			continue
		}
		h, err := hex.DecodeString(f[3+i])
		if err != nil || len(h) == 0 {
			return acceptedKey{}, fmt.Errorf("hash %q is neither hex nor -", f[3+i])
		}
		*dst = hex.EncodeToString(h) // lower case, as keyOf writes it
	}
	return k, nil
}
