// Command caddy is Guardian's custom Caddy build: the standard modules plus
// Guardian's own edge modules.
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/glassmkr/guardian/caddymodules/audit"
	_ "github.com/glassmkr/guardian/caddymodules/auth"
	_ "github.com/glassmkr/guardian/caddymodules/function"
	_ "github.com/glassmkr/guardian/caddymodules/guardian"
	_ "github.com/glassmkr/guardian/caddymodules/headers"
	_ "github.com/glassmkr/guardian/caddymodules/problem"
	_ "github.com/glassmkr/guardian/caddymodules/ratelimit"
	"github.com/glassmkr/guardian/shared/nodump"
	"github.com/glassmkr/guardian/shared/version"
)

// gcPercent is the edge's GOGC when the environment names none. Caddy's
// live heap is small beside the garbage each request leaves, so Go's
// default of 100 starts a collection after every few MiB, and each one
// scans the stack of every request in flight. Twice the headroom halves
// the collections: under ingest load Caddy spent ~15% less CPU per
// snapshot, for some more memory (BENCH.md has both figures). Memory stays
// bounded as before: Caddy sets GOMEMLIMIT to 90% of the cgroup's memory
// limit (MemoryMax) or of the machine's memory, and near it the collector
// runs sooner whatever GOGC says.
const gcPercent = 200

func main() {
	// Caddy's own `caddy version` names the Caddy it embeds; this names
	// the Guardian release.
	version.ExitIfAsked()
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	// The edge holds every secret; its functions run as the same user and
	// must not be able to read them from /proc/<caddy>/environ.
	if err := nodump.Seal(); err != nil {
		fmt.Fprintln(os.Stderr, "guardian:", err)
		os.Exit(1)
	}
	caddycmd.Main()
}
