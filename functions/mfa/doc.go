// Command mfa serves the signed-in user's second factors (shared/mfa) and
// the /settings/security page:
//
//	GET    /api/v1/mfa                     status: app on/off, security keys (name, added, last used), recovery codes left
//	POST   /api/v1/mfa/totp                201 {secret, otpauth_url, qr_url, expires_at}: a new app key, shown once
//	GET    /api/v1/mfa/totp/qr             the QR code (PNG) of the app key being set up
//	POST   /api/v1/mfa/totp/confirm        {code}: 200 {enabled, recovery_codes?}; the app is on
//	DELETE /api/v1/mfa/totp                204; the app is off
//	POST   /api/v1/mfa/webauthn/options    200 {ceremony, options}: options for navigator.credentials.create
//	POST   /api/v1/mfa/webauthn            {ceremony, name, credential}: 201 {id, name, created_at, recovery_codes?}
//	DELETE /api/v1/mfa/webauthn/{id}       204; the security key is removed
//	POST   /api/v1/mfa/recovery-codes      201 {recovery_codes}: ten new codes, the old ones end
//
// Sessions only (the edge admits no key here). Everything but the status
// needs a recent re-auth (shared/stepup): the password within five minutes,
// and the second factor too once the user has one, so a stolen cookie can
// neither add a factor of its own nor remove the user's. Recovery codes come
// with the first factor and are shown once; the app key and its QR code only
// while it is being set up (at most ten minutes). Every change is an audit
// row; no secret is.
//
// Choices: the QR code is a same-origin PNG route, not a data: URL, so the
// pages' CSP (img-src 'self') stays as it is, and it is served only to a
// stepped-up session while the enrolment is unconfirmed. Enrolling and
// removing both need the step-up: adding a factor from a stolen cookie
// would otherwise give the thief assurance level 2, and removing one would
// undo the user's protection. Removing the last factor is allowed (with
// that step-up) and takes the recovery codes with it. A failed enrolment
// code counts against the same per-user and per-address limits as sign-in
// codes. A user's first factor ends the user's other sessions in the same
// transaction (shared/mfa FirstFactor): they were signed in without it.
// A further factor leaves them; being at assurance level 1, they cannot
// take sensitive actions anyway.
//
// Grants: the runtime PostgreSQL role, the MFA secret (it seals app keys
// and hashes recovery codes), the public URL (WebAuthn's origin).
package main
