// Package problem writes RFC 9457 problem details (application/problem+json)
// with Guardian's extra "code" member, a stable machine-readable reason that
// clients switch on instead of parsing titles.
package problem

import (
	"encoding/json"
	"net/http"
	"strings"
)

// ContentType is the media type of a problem document.
const ContentType = "application/problem+json"

// TypeBase prefixes each problem's type URI; the fragment is the code.
const TypeBase = "https://guardian.glassmkr.com/problems#"

// Problem is one RFC 9457 problem document.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Code     string `json:"code"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	// Extra members are merged at the top level of the document.
	Extra map[string]any `json:"-"`
}

// New returns a problem with the standard title for status and the type
// derived from code.
func New(status int, code, detail string) *Problem {
	return &Problem{
		Type:   TypeBase + code,
		Title:  http.StatusText(status),
		Status: status,
		Code:   code,
		Detail: detail,
	}
}

// MarshalJSON flattens Extra into the document, as RFC 9457 extension
// members; the standard members win over an extra of the same name.
func (p *Problem) MarshalJSON() ([]byte, error) {
	type plain Problem
	if len(p.Extra) == 0 {
		return json.Marshal((*plain)(p))
	}
	m := make(map[string]any, len(p.Extra)+6)
	for k, v := range p.Extra {
		m[k] = v
	}
	m["type"], m["title"], m["status"], m["code"] = p.Type, p.Title, p.Status, p.Code
	if p.Detail != "" {
		m["detail"] = p.Detail
	}
	if p.Instance != "" {
		m["instance"] = p.Instance
	}
	return json.Marshal(m)
}

// Challenge is the WWW-Authenticate a 401 carries when its writer set
// none: RFC 9110 requires one on every 401, and this is the one the
// edge's own 401 for a missing credential sends (caddymodules/auth).
const Challenge = `Bearer realm="guardian"`

// Write sends p as the response, with Challenge on a 401 that has no
// WWW-Authenticate yet. Caching is disabled: a problem describes one
// request.
func Write(w http.ResponseWriter, p *Problem) {
	body, err := json.Marshal(p)
	if err != nil {
		// Only an unmarshalable Extra gets here; drop it rather than fail.
		p.Extra = nil
		body, _ = json.Marshal(p)
	}
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	if p.Status == http.StatusUnauthorized && len(h.Values("WWW-Authenticate")) == 0 {
		h.Set("WWW-Authenticate", Challenge)
	}
	w.WriteHeader(p.Status)
	_, _ = w.Write(append(body, '\n'))
}

// DetailForStatus is the default detail for a bare status, so that a
// problem made from a status alone (a route the edge has no handler for,
// a mux's 404) still tells the client something.
func DetailForStatus(status int) string {
	switch status {
	case http.StatusNotFound:
		return "no such resource"
	case http.StatusMethodNotAllowed:
		return "this method is not allowed here"
	case http.StatusBadGateway:
		return "a service behind the edge failed while answering"
	case http.StatusServiceUnavailable:
		return "temporarily unavailable; try again shortly"
	case http.StatusGatewayTimeout:
		return "a service behind the edge took too long to answer"
	}
	if status >= 500 {
		return "an internal error; quote the request id to support"
	}
	return strings.ToLower(http.StatusText(status))
}

// CodeForStatus is the default code for a bare status, used when an error
// carries no code of its own.
func CodeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusUnauthorized:
		return "unauthorized"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusRequestEntityTooLarge:
		return "payload_too_large"
	case http.StatusTooManyRequests:
		return "rate_limited"
	case http.StatusBadGateway:
		return "bad_gateway"
	case http.StatusServiceUnavailable:
		return "unavailable"
	case http.StatusGatewayTimeout:
		return "gateway_timeout"
	}
	if status >= 500 {
		return "internal_error"
	}
	return "error"
}

// Error lets a Problem travel as an error from a handler to the one error
// renderer at the edge.
func (p *Problem) Error() string {
	if p.Detail == "" {
		return p.Code
	}
	return p.Code + ": " + p.Detail
}
