package audit

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/pgtext"
)

// copyBinary encodes rows as the body of `COPY api_audit_log (columns)
// FROM STDIN (FORMAT binary)`, appended to buf.
//
// pgx's CopyFrom would do the same from []any values, but boxing 19 values
// per row and looking up an encoder for each cost the edge more CPU than
// the rest of the audit path together (and feed the garbage collector);
// the columns here are fixed, so each is written straight in PostgreSQL's
// documented binary form (see the send/recv functions of each type).
func copyBinary(buf []byte, rows []*audit.Row) ([]byte, error) {
	buf = append(buf, "PGCOPY\n\xff\r\n\x00"...)
	buf = binary.BigEndian.AppendUint32(buf, 0) // flags
	buf = binary.BigEndian.AppendUint32(buf, 0) // header extension length
	for _, r := range rows {
		var err error
		if buf, err = copyRow(buf, r); err != nil {
			return buf, fmt.Errorf("audit row %s: %w", r.RequestID, err)
		}
	}
	return binary.BigEndian.AppendUint16(buf, 0xffff), nil // trailer: -1
}

// copyRow appends one row, its fields in the order of columns.
func copyRow(buf []byte, r *audit.Row) ([]byte, error) {
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(columns)))
	var err error
	for _, id := range [...]string{r.CustomerID, r.KeyID, r.UserID} {
		if buf, err = appendUUID(buf, id); err != nil {
			return buf, err
		}
	}
	buf = appendTimestamptz(buf, r.OccurredAt)
	buf = appendInet(buf, r.SourceIP)
	buf = appendText(buf, r.UserAgent)
	buf = appendText(buf, r.RequestID)
	buf = appendText(buf, r.Method)
	buf = appendText(buf, r.Path)
	buf = appendNullableText(buf, r.ResourceType)
	buf = appendNullableText(buf, r.ResourceID)
	buf = appendText(buf, r.Action)
	buf = appendText(buf, r.Result)
	if r.StatusCode < 100 || r.StatusCode > 599 {
		return buf, fmt.Errorf("status code %d out of range", r.StatusCode)
	}
	buf = binary.BigEndian.AppendUint32(buf, 2)
	buf = binary.BigEndian.AppendUint16(buf, uint16(r.StatusCode))
	// jsonb: a version byte (1), then the JSON text.
	buf = binary.BigEndian.AppendUint32(buf, uint32(1+len(r.Metadata)))
	buf = append(buf, 1)
	buf = append(buf, r.Metadata...)
	buf = appendText(buf, r.WriterID)
	buf = binary.BigEndian.AppendUint32(buf, 8)
	buf = binary.BigEndian.AppendUint64(buf, uint64(r.WriterSeq))
	buf = appendBytea(buf, r.PrevHash)
	buf = appendBytea(buf, r.RowHash)
	buf = appendBytea(buf, r.CustomerDigest)
	return buf, nil
}

func appendNull(buf []byte) []byte { return binary.BigEndian.AppendUint32(buf, 0xffffffff) }

func appendText(buf []byte, s string) []byte {
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(s)))
	return append(buf, s...)
}

func appendNullableText(buf []byte, s string) []byte {
	if s == "" {
		return appendNull(buf)
	}
	return appendText(buf, s)
}

// appendBytea writes b, or NULL for nil (the first row of a chain has no
// previous hash).
func appendBytea(buf, b []byte) []byte {
	if b == nil {
		return appendNull(buf)
	}
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(b)))
	return append(buf, b...)
}

// appendUUID writes a canonical UUID (8-4-4-4-12 hex digits) as its 16
// bytes, or NULL for "".
func appendUUID(buf []byte, s string) ([]byte, error) {
	if s == "" {
		return appendNull(buf), nil
	}
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return buf, fmt.Errorf("malformed uuid")
	}
	var u [16]byte
	var h [32]byte
	copy(h[0:8], s[0:8])
	copy(h[8:12], s[9:13])
	copy(h[12:16], s[14:18])
	copy(h[16:20], s[19:23])
	copy(h[20:32], s[24:36])
	if _, err := hex.Decode(u[:], h[:]); err != nil {
		return buf, fmt.Errorf("malformed uuid")
	}
	buf = binary.BigEndian.AppendUint32(buf, 16)
	return append(buf, u[:]...), nil
}

// pgEpoch is PostgreSQL's timestamp epoch, 2000-01-01 00:00:00 UTC.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// appendTimestamptz writes t as microseconds since pgEpoch.
func appendTimestamptz(buf []byte, t time.Time) []byte {
	us := t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - pgEpoch.Unix()*1_000_000
	buf = binary.BigEndian.AppendUint32(buf, 8)
	return binary.BigEndian.AppendUint64(buf, uint64(us))
}

// appendInet writes an address as inet (family, prefix bits, is_cidr,
// length, address), or NULL when s is not one: the column is for what the
// edge could tell, not a reason to lose the row.
func appendInet(buf []byte, s string) []byte {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return appendNull(buf)
	}
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		buf = binary.BigEndian.AppendUint32(buf, 8)
		buf = append(buf, 2, 32, 0, 4) // PGSQL_AF_INET
		return append(buf, b[:]...)
	}
	b := a.As16()
	buf = binary.BigEndian.AppendUint32(buf, 20)
	buf = append(buf, 3, 128, 0, 16) // PGSQL_AF_INET6
	return append(buf, b[:]...)
}

// checkRow refuses a row PostgreSQL would refuse (the table's CHECK
// constraints and column types), before it takes a place in a chain: one
// such row would otherwise fail its whole group commit, and then the spool
// replay, again and again.
func checkRow(r *audit.Row) error {
	for _, id := range [...]string{r.CustomerID, r.KeyID, r.UserID} {
		if id != "" {
			if _, err := appendUUID(nil, id); err != nil {
				return errors.New("audit: a row's customer, key or user id is not a UUID")
			}
		}
	}
	switch {
	case len(r.RequestID) < 1 || len(r.RequestID) > 128:
		return errors.New("audit: a row's request id must have 1 to 128 bytes")
	case len(r.Method) < 1 || len(r.Method) > 16:
		return errors.New("audit: a row's method must have 1 to 16 bytes")
	case !audit.Actions[r.Action]:
		return fmt.Errorf("audit: unknown action %q", r.Action)
	case r.Result != audit.ResultSuccess && r.Result != audit.ResultDenied && r.Result != audit.ResultError:
		return fmt.Errorf("audit: unknown result %q", r.Result)
	case r.StatusCode < 100 || r.StatusCode > 599:
		return fmt.Errorf("audit: status code %d out of range", r.StatusCode)
	case r.Metadata != "{}" && (!strings.HasPrefix(r.Metadata, "{") || !json.Valid([]byte(r.Metadata))):
		return errors.New("audit: a row's metadata must be a JSON object")
	}
	for _, s := range [...]string{r.UserAgent, r.RequestID, r.Method, r.Path, r.ResourceType, r.ResourceID, r.Metadata} {
		if !pgtext.Valid(s) {
			return errors.New("audit: a row's text must be UTF-8 without NUL")
		}
	}
	return nil
}
