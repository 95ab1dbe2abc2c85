package chbackup

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/testenv"
)

// nativeDump returns ClickHouse's Native answer to query.
func nativeDump(t *testing.T, query string) []byte {
	t.Helper()
	env := testenv.Servers(t, "clickhouse")
	ch := newCHClient(Config{
		HTTPURL:    env["GUARDIAN_CLICKHOUSE_HTTP_URL"],
		ClickHouse: config.ClickHouse{User: env["GUARDIAN_CLICKHOUSE_USER"], Password: env["GUARDIAN_CLICKHOUSE_PASSWORD"]},
	})
	resp, err := ch.post(context.Background(), query, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const everyType = `SELECT number AS u64, toInt8(number) AS i8, toUInt16(number) AS u16,
	toInt32(number) AS i32, toFloat32(number) AS f32, toFloat64(number) AS f64, toDate(number) AS d,
	toDateTime(number) AS dt, toDateTime(number, 'Europe/Berlin') AS dtz, toString(number) AS s,
	arrayStringConcat(arrayMap(x -> 'x', range(number % 300))) AS long, toFixedString(toString(number % 10), 3) AS fs,
	CAST(number % 2 AS Enum8('a' = 0, 'b' = 1)) AS e8, CAST(number % 2 AS Enum16('x' = 0, 'y(1)' = 1)) AS e16,
	toDecimal32(number, 2) AS d32, toDecimal64(number, 4) AS d64, toDecimal128(number, 3) AS d128,
	CAST(number AS Decimal(20, 2)) AS dec20, generateUUIDv4() AS uuid,
	if(number % 3 = 0, NULL, toString(number)) AS ns, range(number % 4) AS arr, [toString(number)] AS arrs,
	[[number], []] AS arr2, (number, toString(number)) AS tup, [if(number % 2 = 0, NULL, number)] AS arrn,
	NULL AS nul
	FROM system.numbers LIMIT 25000 SETTINGS max_block_size = 1000 FORMAT Native`

func TestCountNativeRowsWalksEveryStoredType(t *testing.T) {
	t.Parallel()
	dump := nativeDump(t, everyType)
	st, err := CountNativeRows(bufio.NewReader(bytes.NewReader(dump)))
	if err != nil {
		t.Fatal(err)
	}
	if st.Rows != 25000 || st.Blocks != 25 || len(st.Columns) != 26 {
		t.Errorf("%d rows in %d blocks of %d columns", st.Rows, st.Blocks, len(st.Columns))
	}

	t.Run("a truncated stream is an error", func(t *testing.T) {
		_, err := CountNativeRows(bufio.NewReader(bytes.NewReader(dump[:len(dump)-7])))
		if err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("an empty answer has no rows", func(t *testing.T) {
		st, err := CountNativeRows(bufio.NewReader(bytes.NewReader(nil)))
		if err != nil || st.Rows != 0 {
			t.Fatalf("%+v %v", st, err)
		}
	})
}

func TestCountNativeRowsRejectsAnExceptionAfterTheData(t *testing.T) {
	t.Parallel()
	// ClickHouse has answered 200 and streams blocks when the query fails:
	// it appends the exception's text.
	dump := nativeDump(t, "SELECT throwIf(number = 150000) AS x, toString(number) AS s FROM system.numbers LIMIT 200000 SETTINGS max_block_size = 1000 FORMAT Native")
	if !bytes.Contains(dump, []byte("DB::Exception")) {
		t.Fatalf("no exception in the answer (%d bytes)", len(dump))
	}
	st, err := CountNativeRows(bufio.NewReader(bytes.NewReader(dump)))
	if err == nil {
		t.Fatalf("accepted, %d rows", st.Rows)
	}
}

func TestSkipperForTypes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		typ string
		ok  bool
	}{
		{"Array(Tuple(String, Nullable(Decimal(10, 2))))", true},
		{"LowCardinality(String)", false},
		{"AggregateFunction(uniq, UInt64)", false},
		{"FixedString(x)", false},
		{"Enum8('a(' = 1)", true},
	} {
		_, err := skipperFor(c.typ)
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.typ, err)
		}
	}
}
