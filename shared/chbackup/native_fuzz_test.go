package chbackup

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"testing"
)

// nativeColumns are the column types the generator below writes, with an
// encoder of one column's data for rows rows (v picks the values).
var nativeColumns = []struct {
	typ    string
	encode func(b *bytes.Buffer, rows int, v byte)
}{
	{"UInt8", func(b *bytes.Buffer, rows int, v byte) { b.Write(bytes.Repeat([]byte{v}, rows)) }},
	{"UInt64", func(b *bytes.Buffer, rows int, v byte) { b.Write(make([]byte, 8*rows)) }},
	{"String", func(b *bytes.Buffer, rows int, v byte) {
		for i := range rows {
			s := bytes.Repeat([]byte{'x'}, (int(v)+i)%200)
			b.Write(binary.AppendUvarint(nil, uint64(len(s))))
			b.Write(s)
		}
	}},
	{"FixedString(3)", func(b *bytes.Buffer, rows int, v byte) { b.Write(make([]byte, 3*rows)) }},
	{"Nullable(String)", func(b *bytes.Buffer, rows int, v byte) {
		b.Write(make([]byte, rows)) // the null map
		for range rows {
			b.WriteByte(1)
			b.WriteByte(v)
		}
	}},
	{"Array(UInt32)", func(b *bytes.Buffer, rows int, v byte) {
		var end uint64
		for i := range rows {
			end += uint64((int(v) + i) % 4)
			b.Write(binary.LittleEndian.AppendUint64(nil, end))
		}
		b.Write(make([]byte, 4*end))
	}},
	{"Tuple(UInt8, String)", func(b *bytes.Buffer, rows int, v byte) {
		b.Write(make([]byte, rows))
		for range rows {
			b.WriteByte(0) // empty strings
		}
	}},
	{"Decimal(20, 2)", func(b *bytes.Buffer, rows int, v byte) { b.Write(make([]byte, 16*rows)) }},
}

// CountNativeRows counts exactly the rows of any stream of the types
// above, and a stream cut anywhere but between two blocks is an error
// (cut between blocks it is the shorter stream). Bytes it was never
// meant for are an error or a count, never a panic or a hang.
func FuzzCountNativeRows(f *testing.F) {
	f.Add([]byte{3, 2, 5, 0, 1, 2}, uint16(10))
	f.Add([]byte{7, 1, 0, 0, 0, 0, 0, 255}, uint16(3))
	f.Add([]byte{}, uint16(0))
	f.Add([]byte("\x01\x01\x01a\x06String\x05hello"), uint16(4))
	f.Fuzz(func(t *testing.T, spec []byte, cut uint16) {
		// Raw: whatever the bytes, no panic.
		_, _ = CountNativeRows(bufio.NewReader(bytes.NewReader(spec)))

		if len(spec) < 2 {
			return
		}
		// Generated: spec[0] picks the columns, spec[1:] each block's rows.
		var cols []int
		for i := range nativeColumns {
			if spec[0]&(1<<i) != 0 {
				cols = append(cols, i)
			}
		}
		if len(cols) == 0 {
			cols = []int{0}
		}
		var stream bytes.Buffer
		var ends []int // where each block ends
		var want uint64
		for bi, r := range spec[1:min(len(spec), 9)] {
			rows := int(r % 50)
			stream.Write(binary.AppendUvarint(nil, uint64(len(cols))))
			stream.Write(binary.AppendUvarint(nil, uint64(rows)))
			for _, c := range cols {
				name := []byte{'c', byte('a' + c)}
				stream.Write(binary.AppendUvarint(nil, uint64(len(name))))
				stream.Write(name)
				stream.Write(binary.AppendUvarint(nil, uint64(len(nativeColumns[c].typ))))
				stream.WriteString(nativeColumns[c].typ)
				nativeColumns[c].encode(&stream, rows, byte(bi)+r)
			}
			want += uint64(rows)
			ends = append(ends, stream.Len())
		}
		st, err := CountNativeRows(bufio.NewReader(bytes.NewReader(stream.Bytes())))
		if err != nil || st.Rows != want || st.Blocks != len(ends) || len(st.Columns) != len(cols) {
			t.Fatalf("%d rows in %d blocks of %d columns: %+v, %v", want, len(ends), len(cols), st, err)
		}

		// Cut at cut (within the stream).
		at := int(cut) % (stream.Len() + 1)
		st, err = CountNativeRows(bufio.NewReader(bytes.NewReader(stream.Bytes()[:at])))
		complete := 0
		for complete < len(ends) && ends[complete] <= at {
			complete++
		}
		atBoundary := at == 0 || complete > 0 && ends[complete-1] == at
		switch {
		case atBoundary && (err != nil || st.Blocks != complete):
			t.Fatalf("cut after block %d: %+v, %v", complete, st, err)
		case !atBoundary && err == nil:
			t.Fatalf("cut at %d of %d (inside block %d) read as %+v", at, stream.Len(), complete+1, st)
		}
	})
}
