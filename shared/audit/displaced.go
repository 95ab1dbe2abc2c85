package audit

import (
	"encoding/hex"
	"strconv"
	"strings"
)

// DisplacedID names the chain of one row that could not be stored at its
// place in chain writer, seq: another row held that position (a role that
// may insert audit rows wrote there first). The row then starts a chain of
// its own, "<writer>!<seq>-<hex of name>", which verify reads as a break
// of writer at seq (reason "displaced").
func DisplacedID(writer string, seq int64, name []byte) string {
	return writer + "!" + strconv.FormatInt(seq, 10) + "-" + hex.EncodeToString(name)
}

// ParseDisplaced reads a DisplacedID back; ok is false for any other id.
func ParseDisplaced(id string) (writer string, seq int64, ok bool) {
	i := strings.LastIndexByte(id, '!')
	if i <= 0 {
		return "", 0, false
	}
	n, name, found := strings.Cut(id[i+1:], "-")
	if !found || name == "" {
		return "", 0, false
	}
	if _, err := hex.DecodeString(name); err != nil {
		return "", 0, false
	}
	seq, err := strconv.ParseInt(n, 10, 64)
	if err != nil || seq < 1 {
		return "", 0, false
	}
	return id[:i], seq, true
}
