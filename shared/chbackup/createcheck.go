package chbackup

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// checkCreate refuses a manifest's CREATE TABLE statement that would do
// more than create an empty MergeTree table. The manifest lies on the
// backup host unauthenticated, and restore verification runs its
// statements on the live ClickHouse: a statement with another engine (URL,
// File, remote tables), an AS SELECT, or a subquery could otherwise read
// the live data and send it anywhere. SHOW CREATE TABLE prints none of
// those for a MergeTree table, nor comments or a second statement. (A
// projection, which newer ClickHouse versions print with its SELECT, is
// refused too: Guardian's tables have none.)
func checkCreate(stmt string) error {
	words, err := sqlTokens(stmt)
	if err != nil {
		return err
	}
	var engines []string
	called := ""
	for i, w := range words {
		switch {
		case strings.EqualFold(w.text, "SELECT"):
			return errors.New("the create statement holds a query")
		case w.depth == 0 && strings.EqualFold(w.text, "AS"):
			return errors.New("the create statement copies another table or query (AS)")
		case strings.EqualFold(w.text, "disk") && strings.HasPrefix(strings.TrimLeft(stmt[w.end:], " \t\r\n"), "("):
			// SETTINGS disk = disk(type = s3, endpoint = ...): a disk the
			// statement defines itself could store the restored rows
			// anywhere. A named disk or storage policy is one the server
			// already has, and stays allowed.
			return errors.New("the create statement defines a disk of its own")
		case called == "" && callsOutside(w.text) && strings.HasPrefix(strings.TrimLeft(stmt[w.end:], " \t\r\n"), "("):
			// file('...') in a column's DEFAULT runs on the live server
			// as the restore inserts; the rest are table functions and
			// engines that read or write elsewhere. SHOW CREATE of
			// Guardian's tables calls none of them. (Refused after the
			// engine is checked, which names the fault better.)
			called = strings.ToLower(w.text)
		case w.depth == 0 && strings.EqualFold(w.text, "ENGINE"):
			if i+1 >= len(words) || words[i+1].depth != 0 {
				return errors.New("the create statement names no engine")
			}
			engines = append(engines, words[i+1].text)
		}
	}
	if len(engines) != 1 || !mergeTreeEngine.MatchString(engines[0]) {
		return fmt.Errorf("the create statement's engine is %v, not one of the MergeTree family", engines)
	}
	if called != "" {
		return fmt.Errorf("the create statement calls %s(", called)
	}
	return nil
}

var mergeTreeEngine = regexp.MustCompile(`^[A-Za-z]*MergeTree$`)

// callsOutside reports whether name (in any letter case) is a function
// or engine that reads or writes outside the server's own tables: those
// named below, any *Cluster, the dictionary and join readers, whose
// sources the operator configured, and a disk defined in place.
func callsOutside(name string) bool {
	n := strings.ToLower(name)
	return reachesOutside[n] || strings.HasSuffix(n, "cluster") || strings.HasPrefix(n, "dict") || strings.HasPrefix(n, "disk") ||
		strings.HasPrefix(n, "joinget") || strings.HasPrefix(n, "iceberg") || strings.HasPrefix(n, "deltalake")
}

// reachesOutside are the functions and engines (lower case) that read or
// write outside the server's own tables.
var reachesOutside = map[string]bool{"url": true, "file": true, "remote": true, "remotesecure": true, "cluster": true,
	"clusterallreplicas": true, "s3": true, "s3cluster": true, "gcs": true, "hdfs": true, "mysql": true, "postgresql": true,
	"sqlite": true, "jdbc": true, "odbc": true, "mongodb": true, "redis": true, "azureblobstorage": true, "kafka": true,
	"rabbitmq": true, "nats": true, "input": true, "executable": true, "dictionary": true, "merge": true, "distributed": true,
	"hudi": true, "hive": true, "oss": true, "cosn": true, "arrowflight": true, "hascolumnintable": true, "view": true, "loop": true}

// sqlToken is a bare word of a statement (keyword, name, function), where
// it is and how deep in parentheses.
type sqlToken struct {
	text       string
	start, end int
	depth      int
}

// sqlTokens returns the bare words of stmt with their positions, skipping
// quoted strings and identifiers and numbers. A comment or a semicolon is
// refused rather than understood: either could hide what ClickHouse runs
// from this reading.
func sqlTokens(stmt string) ([]sqlToken, error) {
	var toks []sqlToken
	depth := 0
	for i := 0; i < len(stmt); {
		c := stmt[i]
		switch {
		case c == '\'' || c == '`' || c == '"':
			end := closingQuote(stmt, i)
			if end < 0 {
				return nil, errors.New("the create statement has an unclosed quote")
			}
			// ClickHouse takes a quoted name for a function's too:
			// `file`('...') is file('...').
			if c != '\'' && strings.HasPrefix(strings.TrimLeft(stmt[end+1:], " \t\r\n"), "(") && callsOutside(unquote(stmt[i+1:end], c)) {
				return nil, fmt.Errorf("the create statement calls %s(", strings.ToLower(unquote(stmt[i+1:end], c)))
			}
			i = end + 1
		case c < 0x20 && c != '\t' && c != '\n' && c != '\r' || c == 0x7f:
			// ClickHouse's lexer reads \v and \f as space: read as
			// anything else here, file\f(...) would not look like a call.
			// SHOW CREATE writes no control character outside quotes.
			return nil, errors.New("the create statement holds a control character outside quotes")
		case c == '(':
			depth++
			i++
		case c == ')':
			if depth--; depth < 0 {
				return nil, errors.New("the create statement's parentheses do not match")
			}
			i++
		case c == ';' || c == '#' || strings.HasPrefix(stmt[i:], "--") || strings.HasPrefix(stmt[i:], "//") || strings.HasPrefix(stmt[i:], "/*"):
			return nil, errors.New("the create statement holds a comment or a second statement")
		case c >= 0x80:
			// Current ClickHouse reads ‘…’ as a string and “…” as an
			// identifier, in which an ASCII quote is text; read as a
			// quote here, it would hide what follows. SHOW CREATE writes
			// other characters only inside ASCII quotes.
			return nil, errors.New("the create statement holds a character outside ASCII outside quotes")
		case c == '$':
			// A heredoc ($$...$$, $tag$...$tag$: current ClickHouse) is a
			// string whose quotes this reading would take for its own:
			// refused, as SHOW CREATE never writes one.
			return nil, errors.New("the create statement holds a heredoc string")
		case isWordByte(c, false):
			j := i + 1
			for j < len(stmt) && isWordByte(stmt[j], true) {
				j++
			}
			toks = append(toks, sqlToken{stmt[i:j], i, j, depth})
			i = j
		case c >= '0' && c <= '9':
			// A number: digits, one dot and digits, an exponent. What
			// follows it without a space (0x1F's x1F, 1e5.SELECT's
			// .SELECT, 1_'s _) is read on as words and punctuation, so a
			// keyword there is seen: ClickHouse reads such a tail as a
			// word or refuses the statement.
			i = numberEnd(stmt, i)
		default:
			i++
		}
	}
	if depth != 0 {
		return nil, errors.New("the create statement's parentheses do not match")
	}
	return toks, nil
}

// numberEnd returns where the number starting at i ends: digits, then a
// dot and digits, then e or E, an optional sign and digits.
func numberEnd(s string, i int) int {
	digits := func(i int) int {
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i
	}
	i = digits(i)
	if i+1 < len(s) && s[i] == '.' && s[i+1] >= '0' && s[i+1] <= '9' {
		i = digits(i + 1)
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < len(s) && s[j] >= '0' && s[j] <= '9' {
			i = digits(j)
		}
	}
	return i
}

// isWordByte reports whether c may be in a bare word; digits only after
// its first byte (inner).
func isWordByte(c byte, inner bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || inner && c >= '0' && c <= '9'
}

// unquote is the text of a quoted name (between its quotes, quote q): a
// backslash takes the next byte as it is, a doubled quote is one.
func unquote(s string, q byte) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
		case s[i] == q && i+1 < len(s) && s[i+1] == q:
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// closingQuote returns the index of the quote closing the one at start,
// or -1: a backslash escapes the next byte, a doubled quote is one quote.
func closingQuote(s string, start int) int {
	q := s[start]
	for i := start + 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case q:
			if i+1 < len(s) && s[i+1] == q {
				i++
				continue
			}
			return i
		}
	}
	return -1
}
