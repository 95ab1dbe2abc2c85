package ratelimit

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/glassmkr/guardian/shared/testenv"
)

// BenchmarkTakeKeyAndAccount is one limiter decision for an authenticated
// request: one EVALSHA over two buckets, over loopback TCP and over Redis's
// unix socket (GUARDIAN_REDIS_SOCKET, what the edge uses on one host).
// Target: under 100 us at the median (p50-us; BenchmarkPingBaseline gives
// the round trip under it on the same machine).
func BenchmarkTakeKeyAndAccount(b *testing.B) {
	r := testenv.NewRedis(b)
	for _, tr := range r.Transports() {
		b.Run(tr[0], func(b *testing.B) {
			l := NewLimiter(redis.NewClient(&redis.Options{Addr: tr[1], Password: r.Password}), r.Prefix, time.Second, nil)
			defer l.Close()
			keys := []string{l.CredentialKey("bench", "k"), l.AccountKey("bench")}
			buckets := []Bucket{{Capacity: 1e9, Rate: 1e9}, {Capacity: 1e9, Rate: 1e9}}
			ctx := context.Background()
			l.Take(ctx, keys, buckets, false)
			b.ReportAllocs()
			var took []time.Duration
			for b.Loop() {
				start := time.Now()
				if d := l.Take(ctx, keys, buckets, false); d.Source != SourceRedis {
					b.Fatal(d)
				}
				took = append(took, time.Since(start))
			}
			reportP50(b, took)
		})
	}
}

// reportP50 reports the median of took in microseconds: a round trip's
// mean is pulled up by the machine's rare long stalls.
func reportP50(b *testing.B, took []time.Duration) {
	if len(took) == 0 {
		return
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds())/1000, "p50-us")
}

// BenchmarkLocalFallback is the per-instance bucket used while Redis is down.
func BenchmarkLocalFallback(b *testing.B) {
	lb := newLocalBuckets()
	keys, buckets := []string{"ip:{192.0.2.1}"}, []Bucket{{Capacity: 1e9, Rate: 1e9}}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		lb.take(now, keys, buckets)
	}
}

// BenchmarkPingBaseline is a bare PING on the same Redis: the round trip
// BenchmarkTakeKeyAndAccount cannot go below, for a ratio on this machine.
func BenchmarkPingBaseline(b *testing.B) {
	r := testenv.NewRedis(b)
	for _, tr := range r.Transports() {
		b.Run(tr[0], func(b *testing.B) {
			c := redis.NewClient(&redis.Options{Addr: tr[1], Password: r.Password})
			defer c.Close()
			ctx := context.Background()
			var took []time.Duration
			for b.Loop() {
				start := time.Now()
				if err := c.Ping(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
			}
			reportP50(b, took)
		})
	}
}

// BenchmarkAfterIdle is a lone decision, and a PING beside it, each after
// 1 ms of quiet: an edge at 1,000 req/s decides that way, with Redis and
// the client's threads asleep between requests. Against
// BenchmarkTakeKeyAndAccount's back-to-back calls, the difference is what
// waking the processes costs on this machine.
func BenchmarkAfterIdle(b *testing.B) {
	r := testenv.NewRedis(b)
	for _, tr := range r.Transports() {
		c := redis.NewClient(&redis.Options{Addr: tr[1], Password: r.Password})
		l := NewLimiter(c, r.Prefix, time.Second, nil)
		keys := []string{l.CredentialKey("bench", "idle"), l.AccountKey("bench")}
		buckets := []Bucket{{Capacity: 1e9, Rate: 1e9}, {Capacity: 1e9, Rate: 1e9}}
		ctx := context.Background()
		l.Take(ctx, keys, buckets, false)
		for _, op := range []struct {
			name string
			do   func() error
		}{
			{"take", func() error {
				if d := l.Take(ctx, keys, buckets, false); d.Source != SourceRedis {
					return fmt.Errorf("decided by %s", d.Source)
				}
				return nil
			}},
			{"ping", func() error { return c.Ping(ctx).Err() }},
		} {
			b.Run(tr[0]+"/"+op.name, func(b *testing.B) {
				var took []time.Duration
				for b.Loop() { // ns/op includes the sleep; p50-us does not
					time.Sleep(time.Millisecond)
					start := time.Now()
					if err := op.do(); err != nil {
						b.Fatal(err)
					}
					took = append(took, time.Since(start))
				}
				reportP50(b, took)
			})
		}
		_ = l.Close()
	}
}

// BenchmarkTakeConcurrent is many requests deciding at once, as on a busy
// edge: they are decided in batches, one script call each.
func BenchmarkTakeConcurrent(b *testing.B) {
	r := testenv.NewRedis(b)
	l := NewLimiter(redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password, PoolSize: 64}), r.Prefix, time.Second, nil)
	defer l.Close()
	buckets := []Bucket{{Capacity: 1e9, Rate: 1e9}, {Capacity: 1e9, Rate: 1e9}}
	b.SetParallelism(16)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		keys := []string{l.CredentialKey("bench", testenv.Name("k")), l.AccountKey("bench")}
		for pb.Next() {
			if d := l.Take(context.Background(), keys, buckets, false); d.Source != SourceRedis {
				b.Error(d)
				return
			}
		}
	})
}
