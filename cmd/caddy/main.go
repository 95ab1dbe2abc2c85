// Command caddy is Guardian's custom Caddy build: the standard modules plus
// Guardian's own edge modules.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/glassmkr/guardian/caddymodules/audit"
	_ "github.com/glassmkr/guardian/caddymodules/auth"
	_ "github.com/glassmkr/guardian/caddymodules/function"
	_ "github.com/glassmkr/guardian/caddymodules/guardian"
	_ "github.com/glassmkr/guardian/caddymodules/headers"
	_ "github.com/glassmkr/guardian/caddymodules/problem"
	_ "github.com/glassmkr/guardian/caddymodules/ratelimit"
)

func main() {
	caddycmd.Main()
}
