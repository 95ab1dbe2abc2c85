package function

import (
	"context"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the "guardian_functions" Caddy app: it owns the function
// processes. Each guardian_function handler gets its instance from the app;
// instances live in a package-wide usage pool so that they survive config
// reloads (the new config takes over running processes) and stop when the
// last config that uses them is unloaded, at shutdown included. The app
// also registers the runtime's metrics and, once the config is running,
// starts the functions configured with min_warm.
//
// Handlers load the app on demand; it needs no configuration.
type App struct {
	mu   sync.Mutex
	warm []*instance
	log  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "guardian_functions",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision registers the metrics with this config's registry.
func (a *App) Provision(ctx caddy.Context) error {
	a.log = ctx.Logger()
	return registerMetrics(ctx.GetMetricsRegistry())
}

// instance returns the shared instance for key, creating it from s; the
// caller must release it with pool.Delete(key) when its config unloads.
func (a *App) instance(key string, s spec, log *zap.Logger) (*instance, error) {
	v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newInstance(s, log), nil
	})
	if err != nil {
		return nil, err
	}
	in := v.(*instance)
	if s.warm {
		a.mu.Lock()
		a.warm = append(a.warm, in)
		a.mu.Unlock()
	}
	return in, nil
}

// Start starts the warm functions in the background: a function that
// fails to start must not stop Caddy, and is retried with backoff.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, in := range a.warm {
		go in.warmUp(context.Background())
	}
	return nil
}

// Stop does nothing: processes stop when their last config is cleaned up,
// which a reload does not do to the functions it keeps.
func (a *App) Stop() error { return nil }

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
