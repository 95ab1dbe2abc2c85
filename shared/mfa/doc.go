// Package mfa is Guardian's second factor: authenticator apps (TOTP, RFC
// 6238), WebAuthn credentials (security keys and passkeys, through
// go-webauthn) and single-use recovery codes; the challenges that carry a
// sign-in or re-auth from its first factor to its second; and the attempt
// limits on codes. functions/auth verifies second factors at sign-in and
// re-auth, functions/mfa enrols and removes them, functions/oidc asks for
// one after Google, and shared/stepup requires one for sensitive actions.
//
// # Choices
//
// TOTP: SHA-1, 6 digits, 30-second steps, a 160-bit seed from crypto/rand
// (what every authenticator app accepts; pquerna/otp generates the key and
// its otpauth:// URL and QR code). A code is accepted for the step before,
// the current one and the one after (±30 s of clock drift). All three
// candidates are computed and compared in constant time. The step of an
// accepted code is stored, and only codes of a later step are accepted
// afterwards: a code, even an intercepted one, works once. The seed is
// sealed with AES-256-GCM (the user id as additional data, so a sealed seed
// copied to another user does not open) under a key derived from
// GUARDIAN_MFA_SECRET, and it never appears in logs, errors or audit rows;
// it is shown once, at enrolment, and its QR code is served as a
// same-origin PNG (the pages' CSP allows no data: images) only while the
// enrolment is unconfirmed and at most EnrolTTL old.
//
// Recovery codes: ten, made when a user gets a first factor, each 50 bits
// from crypto/rand in a 32-letter alphabet without look-alikes, shown as
// xxxxx-xxxxx once. Stored as HMAC-SHA256 (user id and code, under a key
// derived from GUARDIAN_MFA_SECRET): high-entropy codes need no slow hash,
// and a database copy alone cannot test guesses. A code is compared against
// every unused code of the user in constant time and marked used in the
// transaction that completes the sign-in. Removing a user's last factor
// deletes the codes.
//
// WebAuthn: attestation "none" (any authenticator), user verification
// preferred, no resident key required (a second factor, not a username-less
// sign-in), several credentials per user, each with a name and its last
// use. The relying party is the public URL's host (GUARDIAN_URL, or
// GUARDIAN_WEBAUTHN_RP_ID) and the only origin is GUARDIAN_URL's. WebAuthn
// needs a domain name: on an IP address it is switched off and only TOTP is
// offered. An assertion whose signature counter does not advance (a cloned
// authenticator) is refused.
//
// Challenges: after the right password (or a Google sign-in) of a user
// with a factor, no session is issued; the client gets an opaque 256-bit
// token from crypto/rand, valid for ChallengeTTL, bound to that user and to
// its purpose (login or reauth, and for reauth to the session), kept in
// PostgreSQL only as its SHA-256 so any instance can complete it. Browsers
// also get it in the guardian_mfa cookie (HttpOnly, Secure,
// SameSite=Strict, Path=/auth/) so the password form works without script.
// A WebAuthn ceremony's challenge is stored on the same row. Completing
// deletes the row, consumes the factor (time step, recovery code, signature
// counter) and starts the session in one transaction: a challenge and a
// code each work once, however many requests race.
//
// Limits: every second-factor attempt is counted per user and per client
// address (an IPv6 address by its /64, as shared/clientip counts) in
// mfa_attempts (fixed windows of Limits.Window), before it is
// checked, so parallel guesses cannot overshoot; a success takes its count
// back. Over the limit the answer is 429 too_many_attempts until the window
// ends. Sign-in's password step does not tell a user over the limit: it
// answers as for anyone (a wrong password the same 401 as an unknown
// e-mail, a right one the second-factor prompt), so the pause reveals
// neither the account nor whether the password was right; the second
// step says it. Re-auth, the caller's own account, says it at once.
//
// # Limitations
//
// GUARDIAN_MFA_SECRET cannot be rotated in place yet: sealed seeds carry a
// version byte and the derived keys a versioned label for that, but nothing
// re-seals; a new secret means users enrol their apps again and get new
// recovery codes. The limits are fixed windows per user: someone who knows
// a user's password can keep that user's sign-in paused (the price of
// stopping guesses), and gets PerUser guesses per Window (for TOTP, about
// 15 chances in a million per 15 minutes). With WebAuthn off, a user whose
// only factor is a security key signs in with a recovery code only.
package mfa
