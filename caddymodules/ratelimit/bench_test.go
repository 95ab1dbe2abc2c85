package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/glassmkr/guardian/shared/testenv"
)

// BenchmarkTakeKeyAndAccount is one limiter decision for an authenticated
// request: one EVALSHA over two buckets on loopback Redis. Target: under
// 100 us at the median.
func BenchmarkTakeKeyAndAccount(b *testing.B) {
	r := testenv.NewRedis(b)
	l := NewLimiter(redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password}), r.Prefix, time.Second, nil)
	defer l.Close()
	keys := []string{l.CredentialKey("bench", "k"), l.AccountKey("bench")}
	buckets := []Bucket{{Capacity: 1e9, Rate: 1e9}, {Capacity: 1e9, Rate: 1e9}}
	ctx := context.Background()
	l.Take(ctx, keys, buckets, false)
	b.ReportAllocs()
	for b.Loop() {
		if d := l.Take(ctx, keys, buckets, false); d.Source != SourceRedis {
			b.Fatal(d)
		}
	}
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
	c := redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password})
	defer c.Close()
	ctx := context.Background()
	for b.Loop() {
		if err := c.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTakeConcurrent is many requests deciding at once, as on a busy
// edge: their script calls share pipelines.
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
