package chbackup

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ClickHouse's Native format, as its HTTP interface writes and reads it
// (client revision 0, so no block info): a sequence of blocks, each
//
//	varint columns, varint rows,
//	per column: string name, string type, the column's data for rows rows,
//
// strings being a varint length and the bytes. An empty result is an empty
// stream. CountNativeRows walks the blocks without keeping them, so the row
// count of a dump is read from the very bytes that were backed up.
//
// A query that fails after ClickHouse has started its answer appends the
// exception's text to the stream ("Code: 241, e.displayText() = ..."). Every
// block of one query has the same columns, so such a tail fails the check
// that a block repeats the first block's names and types.

// maxNativeString bounds a column name or type, and the count of columns.
const (
	maxNativeString  = 1 << 16
	maxNativeColumns = 1 << 12
)

// NativeStats is what CountNativeRows found.
type NativeStats struct {
	Blocks  int
	Rows    uint64
	Columns []NativeColumn
}

// NativeColumn is a column's name and type in a Native stream.
type NativeColumn struct{ Name, Type string }

// CountNativeRows reads a whole Native stream from r and counts its rows.
func CountNativeRows(r *bufio.Reader) (NativeStats, error) {
	var st NativeStats
	var skippers []skipFunc
	for {
		if _, err := r.Peek(1); err == io.EOF {
			return st, nil
		} else if err != nil {
			return st, err
		}
		cols, err := readUvarint(r)
		if err != nil {
			return st, nativeErr(st, "column count", err)
		}
		rows, err := readUvarint(r)
		if err != nil {
			return st, nativeErr(st, "row count", err)
		}
		if cols > maxNativeColumns {
			return st, nativeErr(st, "column count", fmt.Errorf("%d columns", cols))
		}
		if st.Blocks > 0 && int(cols) != len(st.Columns) {
			return st, nativeErr(st, "header", fmt.Errorf("%d columns after %d in the first block", cols, len(st.Columns)))
		}
		for i := 0; i < int(cols); i++ {
			name, err := readString(r)
			if err != nil {
				return st, nativeErr(st, "column name", err)
			}
			typ, err := readString(r)
			if err != nil {
				return st, nativeErr(st, "column type", err)
			}
			if st.Blocks == 0 {
				skip, err := skipperFor(typ)
				if err != nil {
					return st, nativeErr(st, "column "+strconv.Quote(name), err)
				}
				st.Columns = append(st.Columns, NativeColumn{name, typ})
				skippers = append(skippers, skip)
			} else if c := st.Columns[i]; c.Name != name || c.Type != typ {
				return st, nativeErr(st, "header", fmt.Errorf("column %d is %q %q, first block had %q %q", i, name, typ, c.Name, c.Type))
			}
			if rows > 0 {
				if err := skippers[i](r, rows); err != nil {
					return st, nativeErr(st, "data of column "+strconv.Quote(name), err)
				}
			}
		}
		st.Blocks++
		st.Rows += rows
	}
}

func nativeErr(st NativeStats, what string, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("native stream, block %d: %s: %w", st.Blocks+1, what, err)
}

func readUvarint(r *bufio.Reader) (uint64, error) {
	return binary.ReadUvarint(r)
}

func readString(r *bufio.Reader) (string, error) {
	n, err := readUvarint(r)
	if err != nil {
		return "", err
	}
	if n > maxNativeString {
		return "", fmt.Errorf("string of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// skipFunc skips the data of one column of rows values.
type skipFunc func(r *bufio.Reader, rows uint64) error

func skipBytes(r *bufio.Reader, n uint64) error {
	for n > 0 {
		step := n
		if step > 1<<30 {
			step = 1 << 30
		}
		if _, err := r.Discard(int(step)); err != nil {
			return err
		}
		n -= step
	}
	return nil
}

func fixed(size uint64) skipFunc {
	return func(r *bufio.Reader, rows uint64) error {
		if rows > (1<<63)/size {
			return fmt.Errorf("%d rows", rows)
		}
		return skipBytes(r, rows*size)
	}
}

var fixedSizes = map[string]uint64{
	"UInt8": 1, "Int8": 1, "UInt16": 2, "Int16": 2, "UInt32": 4, "Int32": 4,
	"UInt64": 8, "Int64": 8, "Float32": 4, "Float64": 8, "Date": 2,
	"DateTime": 4, "UUID": 16, "Decimal32": 4, "Decimal64": 8, "Decimal128": 16,
	"IPv4": 4, "IPv6": 16,
	// Nothing (the type of NULL literals) is written as one byte a row.
	"Nothing": 1,
}

// skipperFor returns how to skip a column of type typ. It knows the types
// ClickHouse 18.16 can store in a table, except LowCardinality (experimental
// there) and aggregate function states, whose layout depends on the function.
func skipperFor(typ string) (skipFunc, error) {
	typ = strings.TrimSpace(typ)
	if n, ok := fixedSizes[typ]; ok {
		return fixed(n), nil
	}
	name, args, hasArgs := strings.Cut(typ, "(")
	if hasArgs {
		if !strings.HasSuffix(args, ")") {
			return nil, fmt.Errorf("malformed type %q", typ)
		}
		args = args[:len(args)-1]
	}
	switch name {
	case "String":
		if !hasArgs {
			return skipStrings, nil
		}
	case "DateTime":
		return fixed(4), nil // DateTime('Europe/Berlin')
	case "Enum8":
		return fixed(1), nil
	case "Enum16":
		return fixed(2), nil
	case "FixedString":
		n, err := strconv.ParseUint(strings.TrimSpace(args), 10, 32)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("malformed type %q", typ)
		}
		return fixed(n), nil
	case "Decimal":
		p, _, _ := strings.Cut(args, ",")
		prec, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || prec < 1 || prec > 38 {
			return nil, fmt.Errorf("malformed type %q", typ)
		}
		switch {
		case prec <= 9:
			return fixed(4), nil
		case prec <= 18:
			return fixed(8), nil
		default:
			return fixed(16), nil
		}
	case "Nullable":
		inner, err := skipperFor(args)
		if err != nil {
			return nil, err
		}
		return func(r *bufio.Reader, rows uint64) error {
			if err := skipBytes(r, rows); err != nil { // the null map
				return err
			}
			return inner(r, rows)
		}, nil
	case "Array":
		inner, err := skipperFor(args)
		if err != nil {
			return nil, err
		}
		return func(r *bufio.Reader, rows uint64) error {
			// Offsets: the end of each row's elements, as UInt64.
			var last uint64
			var b [8]byte
			for i := uint64(0); i < rows; i++ {
				if _, err := io.ReadFull(r, b[:]); err != nil {
					return err
				}
				last = binary.LittleEndian.Uint64(b[:])
			}
			if last == 0 {
				return nil
			}
			return inner(r, last)
		}, nil
	case "Tuple":
		var elems []skipFunc
		for _, a := range splitTypeArgs(args) {
			s, err := skipperFor(a)
			if err != nil {
				return nil, err
			}
			elems = append(elems, s)
		}
		if len(elems) == 0 {
			return nil, fmt.Errorf("malformed type %q", typ)
		}
		return func(r *bufio.Reader, rows uint64) error {
			for _, s := range elems {
				if err := s(r, rows); err != nil {
					return err
				}
			}
			return nil
		}, nil
	}
	return nil, fmt.Errorf("type %q is not supported by the row counter", typ)
}

func skipStrings(r *bufio.Reader, rows uint64) error {
	for i := uint64(0); i < rows; i++ {
		n, err := readUvarint(r)
		if err != nil {
			return err
		}
		if n > 0 {
			if err := skipBytes(r, n); err != nil {
				return err
			}
		}
	}
	return nil
}

// splitTypeArgs splits "A, B(C, D), E" at the commas outside parentheses
// and quotes.
func splitTypeArgs(s string) []string {
	var out []string
	depth, start := 0, 0
	inQuote := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case inQuote:
			if c == '\\' {
				i++
			} else if c == '\'' {
				inQuote = false
			}
		case c == '\'':
			inQuote = true
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == ',' && depth == 0:
			out = append(out, strings.TrimSpace(s[start:i]))
			start = i + 1
		}
	}
	if rest := strings.TrimSpace(s[start:]); rest != "" {
		out = append(out, rest)
	}
	return out
}
