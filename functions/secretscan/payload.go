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

type rawReport struct {
	Token  *string `json:"token"`
	Type   string  `json:"type"`
	URL    string  `json:"url"`
	Source string  `json:"source"`
}

// parsePayload reads GitHub's body: a JSON array of {token, type, url,
// source} objects, each with a non-empty string token. Members GitHub
// may add later are ignored. Repeated tokens are kept once, the first
// occurrence winning, in payload order.
func parsePayload(body []byte) ([]report, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '[' {
		return nil, errors.New("the body must be a JSON array")
	}
	var raw []*rawReport
	if err := json.Unmarshal(body, &raw); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return nil, errors.New("each item must be an object whose token, type, url and source are strings")
		}
		return nil, errors.New("the body is not valid JSON")
	}
	out := make([]report, 0, len(raw))
	seen := make(map[string]struct{}, len(raw))
	for i, r := range raw {
		if r == nil || r.Token == nil || *r.Token == "" {
			return nil, fmt.Errorf("item %d has no token", i)
		}
		if _, dup := seen[*r.Token]; dup {
			continue
		}
		seen[*r.Token] = struct{}{}
		out = append(out, report{Token: *r.Token, Type: r.Type, URL: r.URL, Source: r.Source})
	}
	return out, nil
}
