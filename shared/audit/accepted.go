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
// reason, and for "rewritten" the row hash found, so that accepting one
// recomputation of a chain does not accept the next.
type acceptedKey struct {
	writer string
	seq    int64
	reason string
	hash   string
}

func keyOf(b Break) acceptedKey {
	k := acceptedKey{writer: b.WriterID, seq: b.WriterSeq, reason: b.Reason}
	if b.Reason == "rewritten" {
		k.hash = hex.EncodeToString(b.Hash)
	}
	return k
}

// Has reports whether b is accepted.
func (a Accepted) Has(b Break) bool { return a[keyOf(b)] }

// Entry is b as a line of an accepted-breaks list.
func (b Break) Entry() string {
	e := b.WriterID + " " + strconv.FormatInt(b.WriterSeq, 10) + " " + b.Reason
	if b.Reason == "rewritten" {
		e += " " + hex.EncodeToString(b.Hash)
	}
	return e
}

// reasons are the Break reasons a list may accept.
var reasons = map[string]bool{"content": true, "link": true, "gap": true, "rewritten": true, "truncated": true, "displaced": true, "customer": true}

// ParseAccepted reads a list of accepted breaks, one a line as
// Break.Entry writes it: the writer id, the sequence and the reason,
// separated by spaces ("a1b2c3d4e5f6-0 17 content"), and for "rewritten"
// the row hash found, in hex. Blank lines and text after a # are ignored.
// A line that is not such an entry is an error naming it, so that a typo
// cannot quietly accept nothing.
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
	if len(f) < 3 {
		return acceptedKey{}, fmt.Errorf("want writer id, seq and reason, found %d field(s)", len(f))
	}
	k := acceptedKey{writer: f[0], reason: f[2]}
	var err error
	if k.seq, err = strconv.ParseInt(f[1], 10, 64); err != nil || k.seq < 1 {
		return acceptedKey{}, fmt.Errorf("seq %q is not a positive integer", f[1])
	}
	switch {
	case !reasons[k.reason]:
		return acceptedKey{}, fmt.Errorf("unknown reason %q", k.reason)
	case k.reason != "rewritten" && len(f) != 3:
		return acceptedKey{}, fmt.Errorf("want writer id, seq and reason, found %d fields", len(f))
	case k.reason == "rewritten" && len(f) != 4:
		return acceptedKey{}, fmt.Errorf("rewritten: want writer id, seq, reason and the row hash found, found %d fields", len(f))
	case k.reason == "rewritten":
		h, err := hex.DecodeString(f[3])
		if err != nil || len(h) == 0 {
			return acceptedKey{}, fmt.Errorf("rewritten: row hash %q is not hex", f[3])
		}
		k.hash = hex.EncodeToString(h) // lower case, as keyOf writes it
	}
	return k, nil
}
