package chbackup

import (
	"errors"
	"strings"
)

// stripTableTTL returns stmt, a CREATE TABLE statement as SHOW CREATE TABLE
// prints it, without its table-level TTL clause (the TTL after ENGINE, up
// to SETTINGS, COMMENT or the end). A scratch copy with the table's TTL
// would lose rows that had expired in the set to TTL merges while they are
// being counted, and a good backup would verify red. Column TTLs stay:
// they reset values, not rows. A statement without a table TTL (all of
// ClickHouse 18.16's) comes back unchanged. Where the clause cannot be
// delimited for certain (a second TTL at the top level, a clause out of
// the order ClickHouse prints them in), it is refused rather than guessed.
func stripTableTTL(stmt string) (string, error) {
	stripped, _, err := splitTableTTL(stmt)
	return stripped, err
}

// splitTableTTL is stripTableTTL that also returns the clause's expression
// (what follows TTL, as ALTER TABLE … MODIFY TTL takes it), "" when there
// is none.
func splitTableTTL(stmt string) (stripped, expr string, err error) {
	toks, err := sqlTokens(stmt)
	if err != nil {
		return "", "", err
	}
	engine := indexWord(toks, 0, "ENGINE")
	if engine < 0 {
		return "", "", errors.New("the create statement names no engine")
	}
	ttl := indexWord(toks, engine+1, "TTL")
	if ttl < 0 {
		return stmt, "", nil
	}
	if indexWord(toks, ttl+1, "TTL") >= 0 {
		return "", "", errors.New("the create statement has more than one TTL after its engine: cannot tell its table TTL")
	}
	if !startsClause(stmt, toks, ttl) {
		return "", "", errors.New("the create statement's TTL after its engine does not start a clause: cannot strip it")
	}
	end, err := ttlEnd(stmt, toks, ttl)
	if err != nil {
		return "", "", err
	}
	expr = strings.Trim(stmt[toks[ttl].end:end], sqlSpace)
	head := strings.TrimRight(stmt[:toks[ttl].start], sqlSpace)
	if end == len(stmt) {
		return head, expr, nil
	}
	// Keep the separator (a newline, or a space on one line) that ran
	// before the clause that follows.
	sep := stmt[len(strings.TrimRight(stmt[:end], sqlSpace)):end]
	if sep == "" {
		sep = " "
	}
	return head + sep + stmt[end:], expr, nil
}

const sqlSpace = " \t\r\n"

// ttlEnd returns where the table TTL clause starting at toks[ttl] ends: at
// the SETTINGS or COMMENT clause after it, else at the end of stmt.
func ttlEnd(stmt string, toks []sqlToken, ttl int) (int, error) {
	for _, t := range toks[ttl+1:] {
		if t.depth != 0 {
			continue
		}
		switch strings.ToUpper(t.text) {
		case "SETTINGS":
			if !settingsFollow(stmt[t.end:]) {
				return 0, errors.New("the create statement's TTL is followed by SETTINGS that is not a settings clause: cannot strip it")
			}
			return t.start, nil
		case "COMMENT":
			if !strings.HasPrefix(strings.TrimLeft(stmt[t.end:], sqlSpace), "'") {
				return 0, errors.New("the create statement's TTL is followed by COMMENT that is not a comment clause: cannot strip it")
			}
			return t.start, nil
		case "ENGINE", "PARTITION", "PRIMARY", "ORDER", "SAMPLE":
			return 0, errors.New("the create statement has a " + strings.ToUpper(t.text) + " clause after its TTL: cannot strip it")
		}
	}
	return len(stmt), nil
}

// settingsFollow reports whether s, the text after a SETTINGS keyword,
// starts "name =", as a settings clause does.
func settingsFollow(s string) bool {
	s = strings.TrimLeft(s, sqlSpace)
	n := 0
	for n < len(s) && isWordByte(s[n], n > 0) {
		n++
	}
	return n > 0 && strings.HasPrefix(strings.TrimLeft(s[n:], sqlSpace), "=")
}

// exprKeywords take an expression after them: a TTL right after one is a
// column named ttl, not the clause.
var exprKeywords = map[string]bool{
	"BY": true, "KEY": true, "AND": true, "OR": true, "NOT": true, "IN": true, "IS": true,
	"LIKE": true, "ILIKE": true, "BETWEEN": true, "CASE": true, "WHEN": true, "THEN": true,
	"ELSE": true, "INTERVAL": true, "DISTINCT": true, "AS": true, "WHERE": true, "SET": true,
}

// startsClause reports whether toks[i] follows a complete expression (a
// name, number, literal or closing parenthesis), as a clause keyword does,
// rather than an operator or a keyword that expects an operand.
func startsClause(stmt string, toks []sqlToken, i int) bool {
	before := strings.TrimRight(stmt[:toks[i].start], sqlSpace)
	if before == "" || len(before) == toks[i].start {
		return false
	}
	c := before[len(before)-1]
	if c != ')' && c != '\'' && c != '`' && c != '"' && !isWordByte(c, true) {
		return false
	}
	if i > 0 && toks[i-1].end == len(before) && exprKeywords[strings.ToUpper(toks[i-1].text)] {
		return false
	}
	return true
}

// indexWord returns the index of the first token from toks[from:] that is
// word at the top level (outside parentheses), or -1.
func indexWord(toks []sqlToken, from int, word string) int {
	for i := from; i < len(toks); i++ {
		if toks[i].depth == 0 && strings.EqualFold(toks[i].text, word) {
			return i
		}
	}
	return -1
}
