// Package page renders the dashboard's server-side pages in one layout:
// navigation, the page's content, the prompt used for step-up
// re-authentication (the password, then the second factor of a user who
// has one), and the one script, /static/app.js (no inline script: the
// Content-Security-Policy set at the edge forbids it).
package page

import (
	"html/template"
	"net/http"
)

const layout = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}} · Guardian</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head><body>
<header><strong>Guardian</strong>{{if .SignedIn}}
<nav aria-label="Settings"><a href="/settings/keys">API keys</a> · <a href="/settings/sessions">Sessions</a> · <a href="/settings/security">Security</a> · <a href="/settings/audit">Audit log</a></nav>
<form class="inline" method="post" action="/auth/logout" data-api><button type="submit">Sign out</button></form>{{end}}
</header>
<main>
<h1>{{.Title}}</h1>
<p id="status" class="error" role="alert"></p>
{{template "content" .Data}}
</main>
{{if .SignedIn}}<dialog id="reauth" aria-labelledby="reauth-title">
<form method="dialog">
<h2 id="reauth-title">Confirm it is you</h2>
<div data-step="password">
<p>This action needs your password, confirmed in the last five minutes.</p>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<p data-google hidden><a href="/auth/google/start?reauth=1">Confirm with Google</a><span data-google-replay>: back here, the action is then done.</span><span data-google-again hidden>, then do it again.</span></p>
</div>
<div data-step="second" hidden>
<p>Now your second factor.</p>
<p data-method="webauthn" hidden><button type="button" data-use-key>Use a security key</button></p>
<label data-method="code">Code from your authenticator app, or a recovery code <input name="code" autocomplete="one-time-code" autocapitalize="none" spellcheck="false" maxlength="32"></label>
</div>
<p class="error" role="alert"></p>
<button type="submit">Confirm</button> <button type="button" data-cancel>Cancel</button>
</form>
</dialog>{{end}}
</body></html>`

// New returns a page template whose content is the given template text
// (it is executed with the data passed to Render).
func New(name, content string) *template.Template {
	t := template.Must(template.New(name).Parse(layout))
	template.Must(t.New("content").Parse(content))
	return t
}

// Render writes a page. Pages of signed-in users are never cached.
func Render(w http.ResponseWriter, t *template.Template, title string, signedIn bool, data any) error {
	return RenderStatus(w, http.StatusOK, t, title, signedIn, data)
}

// RenderStatus is Render with another status than 200 (a form sent back
// with what to fix is 400).
func RenderStatus(w http.ResponseWriter, status int, t *template.Template, title string, signedIn bool, data any) error {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return t.ExecuteTemplate(w, t.Name(), map[string]any{"Title": title, "SignedIn": signedIn, "Data": data})
}
