package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/notify"
	"github.com/glassmkr/guardian/shared/problem"
)

// Route is the endpoint registered with GitHub.
const Route = "/github/secret-scanning"

// MaxBody bounds GitHub's payload.
const MaxBody = 5 << 20

// GitHub's headers.
const (
	HeaderKeyID     = "Github-Public-Key-Identifier"
	HeaderSignature = "Github-Public-Key-Signature"
)

// Labels answered to GitHub.
const (
	TruePositive  = "true_positive"
	FalsePositive = "false_positive"
)

type handler struct {
	db     *pgxpool.Pool
	hasher *apikey.Hasher
	keys   *keySource
	outbox *outbox // revocation notices
	log    *zap.Logger
	chain  *chain // this process's audit chain, for the revocations' rows

	// refusals lets a refused signature's line through once per
	// refusalLogEvery: the route is public, and a line per forged report
	// would let anyone fill the log. Each refusal is in the audit log
	// (auth_failed) all the same.
	refusals logevery.Gate
}

// refusalLogEvery bounds the refused-signature log lines.
const refusalLogEvery = 30 * time.Second

// logRefusal logs a refused signature at most once per refusalLogEvery,
// with the number refused since the last line.
func (h *handler) logRefusal(keyID, clientIP string, err error) {
	if n, ok := h.refusals.Allow(time.Now(), refusalLogEvery); ok {
		h.log.Warn("secret scanning: signature refused (logged once per 30 s)", zap.Int64("refused", n),
			zap.String("key_identifier", keyID), zap.Error(err), zap.String("client_ip", clientIP))
	}
}

func (h *handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+Route, h.scan)
	return mux
}

// label is one item of the answer to GitHub.
type label struct {
	TokenHash string `json:"token_hash"`
	TokenType string `json:"token_type"`
	Label     string `json:"label"`
}

// refuse answers a request that failed verification, and has the edge
// audit it as a failed authentication and charge it as one.
func refuse(w http.ResponseWriter, status int, code, detail, reason string) {
	audit.Annotate(w, audit.Annotation{ResourceType: "secret_scanning_report", Action: "auth_failed",
		Metadata: map[string]any{"reason": reason}})
	// The edge charges the failure to the sender's address (the brute-force
	// budget), and refuses an address that spent it before this runs.
	identity.ReportAuthFailure(w, reason)
	problem.Write(w, problem.New(status, code, detail))
}

func (h *handler) scan(w http.ResponseWriter, r *http.Request) {
	keyID, sig := r.Header.Get(HeaderKeyID), r.Header.Get(HeaderSignature)
	if keyID == "" || sig == "" {
		refuse(w, http.StatusBadRequest, "missing_signature", "the Github-Public-Key-Identifier and Github-Public-Key-Signature headers are required", "missing_signature")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			problem.Write(w, problem.New(http.StatusRequestEntityTooLarge, "payload_too_large", fmt.Sprintf("the body may be at most %d MiB", MaxBody>>20)))
			return
		}
		problem.Write(w, problem.New(http.StatusBadRequest, "invalid_payload", "the body could not be read"))
		return
	}
	if !plausibleKeyID(keyID) {
		refuse(w, http.StatusUnauthorized, "unknown_key_identifier", "the signing key is not one of GitHub's", "unknown_key_identifier")
		return
	}
	pub, err := h.keys.Key(r.Context(), keyID)
	switch {
	case errors.Is(err, errUnknownKey):
		refuse(w, http.StatusUnauthorized, "unknown_key_identifier", "the signing key is not one of GitHub's", "unknown_key_identifier")
		return
	case err != nil:
		if errors.Is(err, errKeysUnconfirmed) {
			// An identifier no list can vouch for yet: GitHub retries a
			// genuine one after the 503, but a forger could name a new
			// one per report, so it is charged to the sender's
			// brute-force budget like a refused signature. (Not when no
			// list could be fetched at all: that is GitHub's key server
			// away, and the sender most likely GitHub.)
			audit.Annotate(w, audit.Annotation{ResourceType: "secret_scanning_report", Action: "auth_failed",
				Metadata: map[string]any{"reason": "unconfirmed_key_identifier"}})
			identity.ReportAuthFailure(w, "unconfirmed_key_identifier")
		}
		w.Header().Set("Retry-After", "60")
		problem.Write(w, problem.New(http.StatusServiceUnavailable, "keys_unavailable", "GitHub's signing keys cannot be fetched right now"))
		return
	}
	if err := verifySignature(pub, body, sig); err != nil {
		h.logRefusal(keyID, identity.ClientIP(r), err)
		refuse(w, http.StatusUnauthorized, "invalid_signature", "the signature does not verify", "invalid_signature")
		return
	}
	reports, skipped, err := parsePayload(body)
	if err != nil {
		problem.Write(w, problem.New(http.StatusBadRequest, "invalid_payload", err.Error()))
		return
	}
	if skipped > 0 {
		h.log.Warn("secret scanning: items without a usable token skipped", zap.Int("skipped", skipped), zap.Int("reports", len(reports)))
	}
	labels, revoked, err := h.process(r, reports)
	if err != nil {
		// GitHub's documentation promises no retry of a report answered
		// 503: the public places where the keys were found let an
		// operator find them and revoke them by hand. (Never the tokens.)
		h.log.Error("secret scanning: revocation failed; the reported keys may still work", zap.Int("reports", len(reports)),
			zap.Strings("urls", reportedURLs(reports, 50)), zap.Error(err))
		w.Header().Set("Retry-After", "5")
		problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "the reported keys cannot be checked right now"))
		return
	}
	if len(revoked) > 0 {
		h.outbox.kick() // the notices are committed: deliver them now
	}
	truePos := 0
	for _, l := range labels {
		if l.Label == TruePositive {
			truePos++
		}
	}
	audit.Annotate(w, audit.Annotation{ResourceType: "secret_scanning_report", Action: "create", Metadata: map[string]any{
		"reason": RevokedReason, "reported": len(reports), "true_positive": truePos,
		"false_positive": len(labels) - truePos, "revoked": len(revoked), "github_key_identifier": keyID, "skipped_items": skipped,
	}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(labels)
}

// reportedURLs are the first places of up to n reports of tokens that
// look like Guardian's keys.
func reportedURLs(reports []report, n int) []string {
	var out []string
	for _, rep := range reports {
		if len(out) == n {
			break
		}
		if _, err := apikey.Parse(rep.Token); err == nil {
			out = append(out, rep.first().URL)
		}
	}
	return out
}

// plausibleKeyID accepts what a key identifier can look like (GitHub's
// are 64 hex digits), so that junk never causes a key fetch.
func plausibleKeyID(id string) bool {
	if len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// process labels every report, revokes the keys that match and writes
// their audit rows; it returns the labels in payload order and the keys
// revoked now.
func (h *handler) process(r *http.Request, reports []report) ([]label, []revokedKey, error) {
	reqID := identity.RequestID(r)
	if reqID == "" {
		reqID = newRequestID()
	}
	labels := make([]label, len(reports))
	byHash := make(map[[32]byte]int, len(reports))
	var cands []candidate
	for i, rep := range reports {
		sum := sha256.Sum256([]byte(rep.Token))
		labels[i] = label{TokenHash: hex.EncodeToString(sum[:]), TokenType: rep.Type, Label: FalsePositive}
		if _, err := apikey.Parse(rep.Token); err != nil {
			continue // malformed or a failed checksum: not ours, no lookup
		}
		first := rep.first()
		m := map[string]any{
			"reason": RevokedReason, "url": first.URL, "source": first.Source,
			"type": clean(rep.Type, 128), "github_request_id": reqID,
		}
		if n := len(rep.Locations) - 1 + rep.More; n > 0 {
			m["other_locations"] = n // named in the owners' notice
		}
		meta, err := audit.Canonical(m)
		if err != nil {
			return nil, nil, err
		}
		// Found again, after a report revoked it: the row names the
		// report's first place not reported before (the database keeps
		// them), which foundAgain fills in.
		m["already_revoked"] = true
		hash := h.hasher.Sum(rep.Token)
		byHash[hash] = i
		cands = append(cands, candidate{hash: hash, meta: meta, againBase: m, locations: rep.Locations})
	}
	if len(cands) == 0 {
		return labels, nil, nil
	}
	// A leaked key is revoked even if GitHub stops waiting for the
	// answer: the revocation does not end with the request.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), revokeTimeout)
	defer cancel()
	where := func(m match) revokedKey {
		rep := reports[byHash[m.Hash]]
		return revokedKey{match: m, Locations: rep.Locations, More: rep.More}
	}
	// The notices are written in the revocation's transaction, so a
	// revocation is committed with its notices. But a notice must not cost
	// the revocation of a leaked key: they go under a savepoint, and a
	// failure (a missing grant or table, a bad row) is rolled back to it
	// and logged. (Running out of the revocation's time ends the
	// connection, and with it the revocation, which GitHub then retries.)
	queueNotices := func(ctx context.Context, tx pgx.Tx, done []match) error {
		keys := make([]revokedKey, len(done))
		for i, m := range done {
			keys[i] = where(m)
		}
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		err = h.outbox.queue(ctx, sp, byCustomer(keys))
		if err == nil {
			return sp.Commit(ctx)
		}
		if rerr := sp.Rollback(ctx); rerr != nil {
			return errors.Join(err, rerr)
		}
		h.log.Error("secret scanning: revocation notices not written; the keys are revoked, their owners not told",
			zap.Int("keys", len(keys)), zap.String("request_id", reqID), zap.Error(err))
		return nil
	}
	matches, err := revoke(rctx, h.db, h.chain, cands, requestInfo{
		ClientIP: audit.NormalizeIP(identity.ClientIP(r)), UserAgent: clean(r.UserAgent(), 512),
		RequestID: reqID, Path: Route,
	}, queueNotices)
	if err != nil {
		return nil, nil, err
	}
	var revoked []revokedKey
	for _, m := range matches {
		i, ok := byHash[m.Hash]
		if !ok {
			continue
		}
		labels[i].Label = TruePositive
		if m.Revoked {
			revoked = append(revoked, where(m))
		}
	}
	h.log.Info("secret scanning: report processed", zap.Int("reported", len(reports)), zap.Int("well_formed", len(cands)),
		zap.Int("matched", len(matches)), zap.Int("revoked", len(revoked)), zap.String("request_id", reqID))
	return labels, revoked, nil
}

// revokedKey is a key this request revoked, with where it was found
// (report's Locations and More).
type revokedKey struct {
	match
	Locations []location
	More      int
}

// byCustomer groups revoked keys by customer, in customer order.
func byCustomer(revoked []revokedKey) []notice {
	var out []notice
	at := map[string]int{}
	for _, k := range revoked {
		i, ok := at[k.Customer]
		if !ok {
			i = len(out)
			at[k.Customer] = i
			out = append(out, notice{customer: k.Customer})
		}
		out[i].keys = append(out[i].keys, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].customer < out[j].customer })
	return out
}

// revokeTimeout bounds the revocation of one report's keys, which runs to
// its end whether or not GitHub still waits.
const revokeTimeout = 30 * time.Second

// revocationNotice describes a customer's revoked keys. It names each key
// by name, kind and last 4 characters, never the key itself.
func revocationNotice(customer string, keys []revokedKey, to, webhooks []string) notify.Notice {
	var b strings.Builder
	subject := "Guardian: an API key was found public on GitHub and revoked"
	if len(keys) > 1 {
		subject = fmt.Sprintf("Guardian: %d API keys were found public on GitHub and revoked", len(keys))
	}
	b.WriteString("GitHub's secret scanning found the following Guardian API keys in public code.\n")
	b.WriteString("Each has been revoked and no longer works. Anyone could have copied them.\n\n")
	items := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		fmt.Fprintf(&b, "Key:        %s (%s key ending in %s)\n", clean(k.Name, 200), k.Kind, k.Last4)
		places := make([]map[string]string, 0, len(k.Locations))
		for i, l := range k.Locations {
			label := "Found at:   "
			if i > 0 {
				label = "and at:     "
			}
			fmt.Fprintf(&b, "%s%s\n", label, l.URL)
			if l.Source != "" {
				fmt.Fprintf(&b, "Source:     %s\n", l.Source)
			}
			places = append(places, map[string]string{"url": l.URL, "source": l.Source})
		}
		if k.More > 0 {
			fmt.Fprintf(&b, "and at %d more places GitHub reported\n", k.More)
		}
		fmt.Fprintf(&b, "Revoked at: %s\n\n", k.RevokedAt.UTC().Format(time.RFC3339))
		first := location{}
		if len(k.Locations) > 0 {
			first = k.Locations[0]
		}
		// url and source are the first place, as before there were more.
		items = append(items, map[string]any{"id": k.KeyID, "name": k.Name, "kind": k.Kind, "last4": k.Last4,
			"url": first.URL, "source": first.Source, "locations": places, "more_locations": k.More,
			"revoked_at": k.RevokedAt.UTC()})
	}
	b.WriteString("What to do: remove the key from the repository and its history, replace it with a\n")
	b.WriteString("new key in Settings > API keys (collector keys: rotate the server's key), and review\n")
	b.WriteString("the audit log for use of the key before it was revoked.\n")
	return notify.Notice{
		Event:    "api_key.revoked",
		Subject:  subject,
		Text:     b.String(),
		To:       to,
		Webhooks: webhooks,
		Data:     map[string]any{"customer_id": customer, "reason": RevokedReason, "keys": items},
	}
}

// clean drops control characters and cuts s to at most n bytes.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return -1
		}
		return r
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "")
	}
	return s
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
