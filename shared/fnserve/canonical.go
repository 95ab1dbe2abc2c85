package fnserve

import (
	"net/http"
	"path"

	"github.com/glassmkr/guardian/shared/problem"
)

// canonicalPaths answers 404 to a request whose path is not in canonical
// form (an empty, "." or ".." segment, or a trailing slash: what
// path.Clean would change), before h runs. Caddy matches routes, and
// guardian_auth picks scopes, on the cleaned path, but passes the path on
// as sent; a ServeMux would then answer 307 to the clean path, having done
// nothing, and the audit row would record a success (DELETE
// //api/v1/keys/x: action delete, status 307). A refusal is recorded as
// one. 404, not a redirect or a 400: no route is registered at a
// non-canonical path (none ends in a slash either), so this is the answer
// the mux gives any other path it does not serve.
func canonicalPaths(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !canonical(r.URL.Path) || !canonical(r.URL.EscapedPath()) {
			problem.Write(w, problem.New(http.StatusNotFound, "not_found",
				"no such resource: paths are served only in canonical form (no empty, . or .. segments, no trailing slash)"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// canonical reports whether p is an absolute path that path.Clean leaves
// as it is.
func canonical(p string) bool {
	return len(p) > 0 && p[0] == '/' && path.Clean(p) == p
}
