package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// report is one token of GitHub's payload, with every place it was found.
type report struct {
	Token string
	Type  string
	// Locations are the token's distinct places (url and source, as clean
	// keeps them) in payload order, at most maxLocations; More counts the
	// distinct ones past them.
	Locations []location
	More      int
}

// location is one place GitHub found a token.
type location struct{ URL, Source string }

// placeOf is a place of the report at index i.
type placeOf struct {
	i  int
	at location
}

// maxLocations bounds the places kept per token, so a payload repeating
// one token cannot make a notice of any size.
const maxLocations = 20

// first is the place a token was found first (GitHub's order).
func (r report) first() location {
	if len(r.Locations) == 0 {
		return location{}
	}
	return r.Locations[0]
}

// parsePayload reads GitHub's body: a JSON array of {token, type, url,
// source} objects. The body is signed by GitHub, so an item this parser
// cannot use (not an object, no non-empty string token) is skipped and
// counted rather than costing the report's other keys their revocation;
// type, url and source that are not strings are read as empty. Only a
// body that is not a JSON array, or whose items are all unusable, is an
// error. Members GitHub may add later are ignored. A token reported more
// than once (found in several places) is one report, in the place of its
// first occurrence and with its type, holding each distinct url and
// source.
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
	seen := make(map[string]int, len(items))
	var past map[placeOf]struct{} // places past maxLocations, to count each once
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
		at := location{URL: clean(str(fields["url"]), 2048), Source: clean(str(fields["source"]), 128)}
		i, dup := seen[token]
		if !dup {
			seen[token] = len(out)
			out = append(out, report{Token: token, Type: str(fields["type"]), Locations: []location{at}})
			continue
		}
		switch r := &out[i]; {
		case slices.Contains(r.Locations, at):
		case len(r.Locations) < maxLocations:
			r.Locations = append(r.Locations, at)
		default:
			if past == nil {
				past = map[placeOf]struct{}{}
			}
			if _, ok := past[placeOf{i, at}]; !ok {
				past[placeOf{i, at}] = struct{}{}
				r.More++
			}
		}
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
