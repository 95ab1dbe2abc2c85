// Package mfatest is a software WebAuthn authenticator for tests: it
// answers the options a relying party sends to navigator.credentials.create
// and .get with what a browser would post back, made with a real P-256 key
// ("none" attestation, user present and verified, a counter that advances).
// Tests of the server side use it instead of a browser; the browser tests
// use Chromium's virtual authenticator instead of it.
package mfatest
