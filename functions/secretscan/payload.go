package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// report is one match in GitHub's payload.
type report struct {
	Token  string
	Type   string
	URL    string
	Source string
}

// parsePayload reads GitHub's body: a JSON array of {token, type, url,
// source} objects. The body is signed by GitHub, so an item this parser
// cannot use (not an object, no non-empty string token) is skipped and
// counted rather than costing the report's other keys their revocation;
// type, url and source that are not strings are read as empty. Only a
// body that is not a JSON array, or whose items are all unusable, is an
// error. Members GitHub may add later are ignored. Repeated tokens are
// kept once, the first occurrence winning, in payload order.
func parsePayload(body []byte) (reports []report, skipped int, err error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '[' {
		return nil, 0, errors.New("the body must be a JSON array")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(body, &items); err != nil {
		return nil, 0, errors.New("the body is not valid JSON")
	}
	out := make([]report, 0, len(items))
	seen := make(map[string]struct{}, len(items))
	for _, item := range items {
		var fields map[string]json.RawMessage
		if json.Unmarshal(item, &fields) != nil || fields == nil {
			skipped++ // not an object
			continue
		}
		token := str(fields["token"])
		if token == "" {
			skipped++
			continue
		}
		if _, dup := seen[token]; dup {
			continue
		}
		seen[token] = struct{}{}
		out = append(out, report{Token: token, Type: str(fields["type"]), URL: str(fields["url"]), Source: str(fields["source"])})
	}
	if len(out) == 0 && skipped > 0 {
		return nil, skipped, fmt.Errorf("none of the %d items has a token", skipped)
	}
	return out, skipped, nil
}

// str is a JSON string's value, or "" for anything else.
func str(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) != nil {
		return ""
	}
	return s
}
