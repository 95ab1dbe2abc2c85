package main

import (
	"testing"

	"github.com/glassmkr/guardian/shared/problem/problemtest"
)

// GET /api/v1/keys takes no parameters: one sent is a 400 naming it.
func TestTheListRefusesUnknownParameters(t *testing.T) {
	problemtest.RefusesQuery(t, (&handler{}).routes(), "/api/v1/keys")
}
