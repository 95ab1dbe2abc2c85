package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Redis server shared by the run, with a key prefix that belongs
// to one test.
type Redis struct {
	Addr, Password string
	// Socket is the server's unix socket, "" when servers.sh made none.
	Socket string
	// Prefix starts every key the test may touch; its keys are deleted when
	// the test ends.
	Prefix string
	Client *redis.Client
}

// NewRedis returns the run's Redis with a fresh key prefix for t.
func NewRedis(t testing.TB) *Redis {
	t.Helper()
	env := Servers(t, "redis")
	r := &Redis{Addr: env["GUARDIAN_REDIS_ADDR"], Password: env["GUARDIAN_REDIS_PASSWORD"], Socket: env["GUARDIAN_REDIS_SOCKET"], Prefix: Name("t") + ":"}
	r.Client = redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		iter := r.Client.Scan(ctx, 0, r.Prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			r.Client.Del(ctx, iter.Val())
		}
		_ = r.Client.Close()
	})
	return r
}

// Transports are the ways to reach r, by name: "tcp" (loopback) and, when
// it has one, "unix" (its socket). Benchmarks run on each.
func (r *Redis) Transports() [][2]string {
	ts := [][2]string{{"tcp", r.Addr}}
	if r.Socket != "" {
		ts = append(ts, [2]string{"unix", r.Socket})
	}
	return ts
}
