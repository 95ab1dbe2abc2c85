// Package identity carries who is calling from the edge to a function.
//
// Caddy's auth module decides the identity; the function runtime removes
// every Guardian-* header a client sent and then writes the identity as
// Guardian-* request headers. A function reads it with FromRequest and
// nothing else: it never sees or re-parses a credential. Functions listen
// only on sockets that only Caddy can open, so these headers cannot be
// forged from outside.
package identity

import (
	"net/http"
	"regexp"
	"strings"
)

// Header names. All share HeaderPrefix, which the runtime strips from
// client requests.
const (
	HeaderPrefix    = "Guardian-"
	HeaderKind      = "Guardian-Auth-Kind"
	HeaderCustomer  = "Guardian-Customer-Id"
	HeaderUser      = "Guardian-User-Id"
	HeaderSession   = "Guardian-Session-Id"
	HeaderKey       = "Guardian-Key-Id"
	HeaderServer    = "Guardian-Server-Id"
	HeaderScope     = "Guardian-Scope"
	HeaderClientIP  = "Guardian-Client-Ip"
	HeaderRequestID = "Guardian-Request-Id"
)

// HeaderAuthFailure is a response header: a function that checks a
// credential of its own (the secret-scanning webhook's signature) answers
// a failed check with it, naming the reason (ReportAuthFailure). The
// runtime removes it from the answer and reports the failure to the edge
// as guardian_auth reports its own, so the ip rate-limit tier charges it
// to the caller's address.
const HeaderAuthFailure = "Guardian-Auth-Failure"

// ReportAuthFailure marks the answer being written to w as a failed
// credential check, for reason: lower-case letters, digits and _, at most
// 64 (others are ignored by the runtime).
func ReportAuthFailure(w http.ResponseWriter, reason string) {
	w.Header().Set(HeaderAuthFailure, reason)
}

// ValidFailureReason reports whether reason may be reported by
// ReportAuthFailure.
func ValidFailureReason(reason string) bool {
	if reason == "" || len(reason) > 64 {
		return false
	}
	for i := 0; i < len(reason); i++ {
		c := reason[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// Kinds of credential.
const (
	KindSession   = "session"
	KindAccount   = "account_key"
	KindCollector = "collector_key"
)

// VarKey is the Caddy request variable under which the auth module stores
// the request's *Identity. It is read-only: the auth module may hand out
// the identity its credential cache holds.
const VarKey = "guardian.identity"

// RequestIDVarKey is the Caddy request variable holding the request id.
const RequestIDVarKey = "guardian.request_id"

// Identity is the authenticated caller of one request.
type Identity struct {
	Kind       string
	CustomerID string
	UserID     string // sessions only
	SessionID  string // sessions only
	KeyID      string // keys only
	ServerID   string // collector keys only
	Scope      string // read, write or admin; collector keys have none
}

// SetHeaders writes id into h, leaving out empty fields.
func (id *Identity) SetHeaders(h http.Header) { SetEdgeHeaders(h, id, "", "") }

// SetEdgeHeaders writes what the edge tells a function about a request:
// the caller's identity (nil: anonymous), the client's address and the
// request id, leaving out empty values. Every proxied request passes
// here, so the values share one backing array (as net/http's header
// parser does) instead of taking an allocation each; each header's slice
// is capped at its one value, so adding to one header cannot overwrite
// the next.
func SetEdgeHeaders(h http.Header, id *Identity, clientIP, requestID string) {
	var vals [len(edgeHeaders)]string
	if id != nil {
		vals = [...]string{id.Kind, id.CustomerID, id.UserID, id.SessionID, id.KeyID, id.ServerID, id.Scope, "", ""}
	}
	vals[7], vals[8] = clientIP, requestID
	n := 0
	for _, v := range vals {
		if v != "" {
			n++
		}
	}
	backing := make([]string, 0, n)
	for i, v := range vals {
		if v != "" {
			backing = append(backing, v)
			h[edgeHeaders[i]] = backing[len(backing)-1 : len(backing) : len(backing)]
		}
	}
}

// edgeHeaders name SetEdgeHeaders' values, in their order.
var edgeHeaders = [...]string{HeaderKind, HeaderCustomer, HeaderUser, HeaderSession, HeaderKey, HeaderServer, HeaderScope, HeaderClientIP, HeaderRequestID}

// FromRequest returns the identity the edge attached to r, and false for
// an anonymous request.
func FromRequest(r *http.Request) (Identity, bool) {
	h := r.Header
	id := Identity{
		Kind:       h.Get(HeaderKind),
		CustomerID: h.Get(HeaderCustomer),
		UserID:     h.Get(HeaderUser),
		SessionID:  h.Get(HeaderSession),
		KeyID:      h.Get(HeaderKey),
		ServerID:   h.Get(HeaderServer),
		Scope:      h.Get(HeaderScope),
	}
	return id, id.Kind != "" && id.CustomerID != ""
}

// ClientIP returns the client address the edge saw.
func ClientIP(r *http.Request) string { return r.Header.Get(HeaderClientIP) }

// RequestID returns the edge's id of the request.
func RequestID(r *http.Request) string { return r.Header.Get(HeaderRequestID) }

// Strip removes every header whose name starts with HeaderPrefix, in any
// letter case.
func Strip(h http.Header) {
	for k := range h {
		if IsIdentityHeader(k) {
			delete(h, k)
		}
	}
}

// IsIdentityHeader reports whether name belongs to the identity headers.
func IsIdentityHeader(name string) bool {
	return len(name) >= len(HeaderPrefix) && strings.EqualFold(name[:len(HeaderPrefix)], HeaderPrefix)
}

var idPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ValidID reports whether s has the shape of the ids Guardian gives out
// (lower-case UUIDs), so a malformed id from a URL or body is refused
// before it reaches a query.
func ValidID(s string) bool { return idPattern.MatchString(s) }
