// Command caddy is Guardian's custom Caddy build: the standard modules plus
// Guardian's own edge modules.
package main

import (
	"fmt"
	"os"

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
)

func main() {
	// The edge holds every secret; its functions run as the same user and
	// must not be able to read them from /proc/<caddy>/environ.
	if err := nodump.Seal(); err != nil {
		fmt.Fprintln(os.Stderr, "guardian:", err)
		os.Exit(1)
	}
	caddycmd.Main()
}
