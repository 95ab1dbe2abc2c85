package ratelimit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// newTestLimiter is a limiter on the run's Redis under the test's prefix,
// with the script's clock under the test's control.
func newTestLimiter(t *testing.T) (*Limiter, *atomic.Int64) {
	t.Helper()
	r := testenv.NewRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password, MaxRetries: -1})
	l := NewLimiter(rdb, r.Prefix, time.Second, nil)
	t.Cleanup(func() { _ = l.Close() })
	var clock atomic.Int64
	clock.Store(1_800_000_000_000)
	l.scriptNow = clock.Load
	return l, &clock
}

func TestBurstUpToCapacityThenRefusal(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	keys, b := []string{l.IPKey("198.51.100.7")}, []Bucket{{Capacity: 5, Rate: 1}}
	for i := range 5 {
		d := l.Take(context.Background(), keys, b, false)
		if !d.Allowed || d.Remaining != 4-i || d.Limit != 5 || d.Source != SourceRedis {
			t.Fatalf("request %d: %+v", i, d)
		}
	}
	d := l.Take(context.Background(), keys, b, false)
	if d.Allowed || d.Remaining != 0 || d.RetryAfter != time.Second || d.Reset != 5*time.Second {
		t.Fatalf("sixth request: %+v", d)
	}
}

func TestRefillAtTheConfiguredRate(t *testing.T) {
	t.Parallel()
	l, clock := newTestLimiter(t)
	keys, b := []string{l.IPKey("198.51.100.8")}, []Bucket{{Capacity: 10, Rate: 4}}
	for range 10 {
		l.Take(context.Background(), keys, b, false)
	}
	clock.Add(750) // 3 tokens at 4/s
	for i := range 3 {
		if d := l.Take(context.Background(), keys, b, false); !d.Allowed {
			t.Fatalf("refilled token %d refused: %+v", i, d)
		}
	}
	if d := l.Take(context.Background(), keys, b, false); d.Allowed {
		t.Fatalf("a fourth token appeared: %+v", d)
	}
	clock.Add(60_000) // long idle: capped at capacity
	for range 10 {
		if d := l.Take(context.Background(), keys, b, false); !d.Allowed {
			t.Fatal("bucket did not refill to capacity")
		}
	}
	if d := l.Take(context.Background(), keys, b, false); d.Allowed {
		t.Fatal("bucket refilled past capacity")
	}
}

func TestKeyAndAccountAreChargedTogetherOrNotAtAll(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	keyA := l.CredentialKey("cust", "keyA")
	keyB := l.CredentialKey("cust", "keyB")
	acct := l.AccountKey("cust")
	b := []Bucket{{Capacity: 10, Rate: 1}, {Capacity: 3, Rate: 1}}
	for range 3 {
		if d := l.Take(context.Background(), []string{keyA, acct}, b, false); !d.Allowed {
			t.Fatal("refused within both budgets")
		}
	}
	// The account is empty: neither bucket may be charged now.
	for range 5 {
		if d := l.Take(context.Background(), []string{keyB, acct}, b, false); d.Allowed || d.Limit != 3 {
			t.Fatalf("account tier did not bind: %+v", d)
		}
	}
	if tokens, _, err := stored(l, keyB); err != nil || tokens != 10 {
		t.Fatalf("key B charged while refused: %v tokens (%v)", tokens, err)
	}
}

// stored reads a bucket as the script keeps it: tokens and the ms of its
// last charge, two little-endian doubles.
func stored(l *Limiter, key string) (tokens, at float64, err error) {
	b, err := l.rdb.Get(context.Background(), key).Bytes()
	if err != nil {
		return 0, 0, err
	}
	if len(b) != 16 {
		return 0, 0, fmt.Errorf("bucket of %d bytes", len(b))
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(b)), math.Float64frombits(binary.LittleEndian.Uint64(b[8:])), nil
}

// A key the script cannot read as a bucket (a hash bucket of an older
// version, a value of the wrong size) counts as a full bucket and is
// replaced, so a change of encoding neither refuses nor fails open.
func TestAnUnreadableBucketCountsAsFull(t *testing.T) {
	t.Parallel()
	l, clock := newTestLimiter(t)
	ctx := context.Background()
	hash, short := l.IPKey("198.51.100.20"), l.IPKey("198.51.100.21")
	if err := l.rdb.HSet(ctx, hash, "t", "0", "ts", strconv.FormatInt(clock.Load(), 10)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.rdb.Set(ctx, short, "0", 0).Err(); err != nil {
		t.Fatal(err)
	}
	b := []Bucket{{Capacity: 5, Rate: 1}}
	for _, k := range []string{hash, short} {
		if d := l.Take(ctx, []string{k}, b, false); !d.Allowed || d.Remaining != 4 || d.Source != SourceRedis {
			t.Fatalf("%s: %+v", k, d)
		}
		tokens, at, err := stored(l, k)
		if err != nil || tokens != 4 || at != float64(clock.Load()) {
			t.Fatalf("%s after a take: %v tokens at %v (%v)", k, tokens, at, err)
		}
		// Forgotten by Redis once full again: 1 s to refill, plus 1 s.
		if ttl := l.rdb.PTTL(ctx, k).Val(); ttl <= time.Second || ttl > 2*time.Second {
			t.Fatalf("%s expires in %v", k, ttl)
		}
	}
}

// A bucket never holds more than its capacity, even one lowered since it
// was last charged, and a stored value that is not a number (NaN) counts
// as a full bucket.
func TestABucketNeverHoldsMoreThanItsCapacity(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	ctx := context.Background()
	k := l.IPKey("198.51.100.22")
	if d := l.Take(ctx, []string{k}, []Bucket{{Capacity: 100, Rate: 1}}, false); d.Remaining != 99 {
		t.Fatalf("at capacity 100: %+v", d)
	}
	d := l.Take(ctx, []string{k}, []Bucket{{Capacity: 5, Rate: 1}}, false)
	if !d.Allowed || d.Remaining != 4 || d.Source != SourceRedis {
		t.Fatalf("at capacity 5: %+v", d)
	}
	if ttl := l.rdb.PTTL(ctx, k).Val(); ttl <= time.Second || ttl > 2*time.Second {
		t.Fatalf("expires in %v", ttl)
	}
	nan := l.IPKey("198.51.100.23")
	v := binary.LittleEndian.AppendUint64(nil, math.Float64bits(math.NaN()))
	v = binary.LittleEndian.AppendUint64(v, math.Float64bits(math.NaN()))
	if err := l.rdb.Set(ctx, nan, v, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if d := l.Take(ctx, []string{nan}, []Bucket{{Capacity: 5, Rate: 1}}, false); !d.Allowed || d.Remaining != 4 || d.Source != SourceRedis {
		t.Fatalf("over a NaN bucket: %+v", d)
	}
}

func TestScriptIsReloadedAfterRedisForgetsIt(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	keys, b := []string{l.IPKey("198.51.100.9")}, []Bucket{{Capacity: 5, Rate: 1}}
	l.Take(context.Background(), keys, b, false)
	if err := l.rdb.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if d := l.Take(context.Background(), keys, b, false); d.Source != SourceRedis || d.Remaining != 3 {
		t.Fatalf("after SCRIPT FLUSH: %+v", d)
	}
}

// clusterLimiter is a limiter on a real three-master Redis Cluster of the
// test's own, with its client.
func clusterLimiter(t *testing.T, prefix string) (*Limiter, redis.UniversalClient) {
	t.Helper()
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: testenv.RedisCluster(t), IsClusterMode: true})
	l := NewLimiter(rdb, prefix, time.Second, nil)
	t.Cleanup(func() { _ = l.Close() })
	return l, rdb
}

// answer gives every call of a group the error when the script's reply
// does not hold each decision's values: no call is handed another's.
func TestAShortBatchReplyFailsEveryCallOfTheGroup(t *testing.T) {
	g := []*call{{keys: []string{"a"}, res: make(chan callResult, 1)}, {keys: []string{"b", "c"}, res: make(chan callResult, 1)}}
	answer(g, make([]int64, 1+3+1+3), nil) // one value short of 1+3 and 1+6
	for i, c := range g {
		if r := <-c.res; !errors.Is(r.err, errReply) || r.vals != nil {
			t.Errorf("call %d: %v %v", i, r.vals, r.err)
		}
	}
	answer(g, make([]int64, 11), nil)
	for i, c := range g {
		if r := <-c.res; r.err != nil || len(r.vals) != 1+3*len(c.keys) {
			t.Errorf("call %d of a whole reply: %v %v", i, r.vals, r.err)
		}
	}
}

// take is one decision's keys and buckets.
type take struct {
	keys    []string
	buckets []Bucket
}

// decideTogether has takes decided as one batch, as the pipeliner sends
// the decisions of concurrent requests, and returns their decisions.
func decideTogether(t *testing.T, l *Limiter, takes ...take) []Decision {
	t.Helper()
	batch := make([]*call, len(takes))
	for i, tk := range takes {
		shapes, nowMs := l.scriptArgs(tk.buckets)
		batch[i] = &call{keys: tk.keys, shapes: shapes, nowMs: nowMs, deadline: time.Now().Add(10 * time.Second), res: make(chan callResult, 1)}
	}
	l.pipe.send(batch)
	out := make([]Decision, len(takes))
	for i, c := range batch {
		r := <-c.res
		if r.err != nil {
			t.Fatalf("decision %d: %v", i, r.err)
		}
		d, err := decode(r.vals, takes[i].buckets)
		if err != nil {
			t.Fatalf("decision %d: %v", i, err)
		}
		out[i] = d
	}
	return out
}

// One script call decides a batch in order, each decision as if alone:
// later decisions see the tokens earlier ones took, and a refused
// decision takes from none of its buckets.
func TestABatchIsDecidedInOrder(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	ip := take{[]string{l.IPKey("198.51.100.60")}, []Bucket{{Capacity: 3, Rate: 1}}}
	var got []string
	for _, d := range decideTogether(t, l, ip, ip, ip, ip, ip) {
		got = append(got, fmt.Sprintf("%v/%d", d.Allowed, d.Remaining))
	}
	if want := "true/2 true/1 true/0 false/0 false/0"; strings.Join(got, " ") != want {
		t.Fatalf("five decisions on a bucket of three: %s, want %s", strings.Join(got, " "), want)
	}

	// Two keys of one account with one token left: the first takes it, the
	// second is refused and its key keeps all of its tokens.
	shapes := []Bucket{{Capacity: 5, Rate: 0.001}, {Capacity: 1, Rate: 0.001}}
	first := take{[]string{l.CredentialKey("c60", "k1"), l.AccountKey("c60")}, shapes}
	second := take{[]string{l.CredentialKey("c60", "k2"), l.AccountKey("c60")}, shapes}
	ds := decideTogether(t, l, first, second)
	if !ds[0].Allowed || ds[1].Allowed || ds[1].Remaining != 0 || ds[1].RetryAfter <= 0 {
		t.Fatalf("one account token for two keys: %+v", ds)
	}
	if d := l.Take(context.Background(), second.keys[:1], shapes[:1], false); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("the refused key was charged: %+v", d)
	}

	// Decisions of one and of two buckets mixed, each answered with its
	// own values; a later decision with a smaller capacity on a bucket
	// named before sees it clamped, and the bucket expires as that shape
	// says (the last decision's).
	addr := l.IPKey("198.51.100.61")
	big, small := []Bucket{{Capacity: 10, Rate: 1}}, []Bucket{{Capacity: 4, Rate: 1}}
	acct := take{[]string{l.CredentialKey("c61", "k"), l.AccountKey("c61")}, []Bucket{{Capacity: 7, Rate: 1}, {Capacity: 3, Rate: 1}}}
	ds = decideTogether(t, l, take{[]string{addr}, big}, acct, take{[]string{addr}, big}, acct, take{[]string{addr}, small})
	got = got[:0]
	for _, d := range ds {
		got = append(got, fmt.Sprintf("%v/%d/%d/%v", d.Allowed, d.Remaining, d.Limit, d.Reset))
	}
	if want := "true/9/10/1s true/2/3/1s true/8/10/2s true/1/3/2s true/3/4/1s"; strings.Join(got, " ") != want {
		t.Fatalf("a mixed batch: %s, want %s", strings.Join(got, " "), want)
	}
	if ttl := l.rdb.PTTL(context.Background(), addr).Val(); ttl <= time.Second || ttl > 2*time.Second {
		t.Fatalf("the bucket expires in %v, want its last shape's 1 s (+1 s)", ttl)
	}
}

// Concurrent decisions of many customers go out together on a cluster
// too: one script call per hash tag, each charged in its own slot.
func TestRedisClusterDecidesABatchOfManyAccounts(t *testing.T) {
	t.Parallel()
	l, rdb := clusterLimiter(t, "guardian:rl:batch:")
	b := []Bucket{{Capacity: 2, Rate: 0.001}, {Capacity: 100, Rate: 0.001}}
	batch := func(round string) []take {
		var takes []take
		for range 3 {
			for i := range 8 {
				customer := fmt.Sprintf("%s%d", round, i)
				takes = append(takes, take{[]string{l.CredentialKey(customer, "k"), l.AccountKey(customer)}, b})
			}
		}
		return takes
	}
	// The first batch finds the script loaded on no master (each call
	// falls back to EVAL); the second is one pipeline of EVALSHAs.
	for _, round := range []string{"cold", "warm"} {
		for i, d := range decideTogether(t, l, batch(round)...) {
			want := i < 16 // each customer's key has two tokens: its third decision is refused
			if d.Allowed != want || d.Source != SourceRedis {
				t.Fatalf("%s batch, decision %d (customer %d, its %d.): %+v", round, i, i%8, i/8+1, d)
			}
		}
		err := rdb.(*redis.ClusterClient).ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			return bucketScript.Load(ctx, m).Err()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A decision a batch could not carry is a caller's fault, refused before
// it can fail the decisions sent with it.
func TestTakeRefusesKeysThatCannotShareABatch(t *testing.T) {
	l := NewLimiter(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "t:", time.Millisecond, nil)
	t.Cleanup(func() { _ = l.Close() })
	one := []Bucket{{Capacity: 1, Rate: 1}}
	for name, tc := range map[string]struct {
		keys    []string
		buckets []Bucket
	}{
		"no keys":          {nil, nil},
		"fewer buckets":    {[]string{l.CredentialKey("c", "k"), l.AccountKey("c")}, one},
		"two hash tags":    {[]string{l.CredentialKey("c", "k"), l.AccountKey("d")}, []Bucket{one[0], one[0]}},
		"an address's too": {[]string{l.IPKey("192.0.2.1"), l.AccountKey("c")}, []Bucket{one[0], one[0]}},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: taken", name)
				}
			}()
			l.Take(context.Background(), tc.keys, tc.buckets, false)
		}()
	}
}

func TestHashTag(t *testing.T) {
	for key, want := range map[string]string{
		"rl:b2:{a:c1}:c:k": "a:c1",
		"rl:b2:ip:{::1}":   "::1",
		"{a}{b}":           "a",
		"x{}y{z}":          "x{}y{z}", // an empty tag: the whole key
		"x}y{z":            "x}y{z",   // no "}" after the "{"
		"plain":            "plain",
	} {
		if got := hashTag(key); got != want {
			t.Errorf("hashTag(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestRedisClusterChargesBothTiersInOneSlot(t *testing.T) {
	t.Parallel()
	l, rdb := clusterLimiter(t, "guardian:rl:")
	b := []Bucket{{Capacity: 2, Rate: 1}, {Capacity: 100, Rate: 1}}
	for i, customer := range []string{"c1", "c2", "c3", "c4", "c5", "c6"} {
		keys := []string{l.CredentialKey(customer, "k"), l.AccountKey(customer)}
		for j := range 2 {
			if d := l.Take(context.Background(), keys, b, false); !d.Allowed || d.Source != SourceRedis {
				t.Fatalf("customer %d request %d: %+v", i, j, d)
			}
		}
		if d := l.Take(context.Background(), keys, b, false); d.Allowed || d.Source != SourceRedis {
			t.Fatalf("customer %d: third request %+v", i, d)
		}
	}
	// Keys without the shared tag really are refused by a cluster, so the
	// test above proves the tags work, not that Redis is lenient.
	_, err := bucketScript.Run(context.Background(), rdb, []string{"x:{a}", "x:{b}"}, "", 2, 1, 1, 1, 1).Result()
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("untagged keys: %v", err)
	}
}

// Not parallel: redis_up and the decision counters are process-wide, and
// a test beside this one with its Redis up would set redis_up back to 1.
func TestFailsOpenWhileRedisIsDownAndRecovers(t *testing.T) {
	env, dir := testenv.Private(t, "redis")
	core, logs := observer.New(zap.WarnLevel)
	rdb := redis.NewClient(&redis.Options{Addr: env["GUARDIAN_REDIS_ADDR"], Password: env["GUARDIAN_REDIS_PASSWORD"], MaxRetries: -1, DialerRetries: 1, DialTimeout: 100 * time.Millisecond})
	l := NewLimiter(rdb, "t:", 100*time.Millisecond, zap.New(core))
	t.Cleanup(func() { _ = l.Close() })
	ip := []string{l.IPKey("203.0.113.5")}
	acct := []string{l.CredentialKey("c", "k"), l.AccountKey("c")}
	ipB := []Bucket{{Capacity: 3, Rate: 0.001}}
	acB := []Bucket{{Capacity: 1, Rate: 0.001}, {Capacity: 1, Rate: 0.001}}
	if d := l.Take(context.Background(), acct, acB, false); !d.Allowed || d.Source != SourceRedis {
		t.Fatalf("with Redis: %+v", d)
	}

	if err := testenv.Stop(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	open0 := testutil.ToFloat64(metrics.decisions.WithLabelValues(SourceOpen))
	for range 50 {
		// Out of account tokens, but Redis cannot say so: fail open.
		if d := l.Take(context.Background(), acct, acB, false); !d.Allowed || d.Source != SourceOpen {
			t.Fatalf("account tier with Redis down: %+v", d)
		}
	}
	if got := testutil.ToFloat64(metrics.decisions.WithLabelValues(SourceOpen)) - open0; got != 50 {
		t.Errorf("fail-open decisions counted %v, want 50", got)
	}
	if testutil.ToFloat64(metrics.redisUp) != 0 {
		t.Error("redis_up still 1 while Redis is down")
	}
	// The brute-force tier falls back to a per-instance bucket.
	allowed := 0
	for range 10 {
		if d := l.Take(context.Background(), ip, ipB, true); d.Allowed {
			allowed++
		} else if d.Source != SourceLocal {
			t.Fatalf("ip tier refusal from %q", d.Source)
		}
	}
	if allowed != 3 {
		t.Fatalf("local ip bucket allowed %d of 10, want 3", allowed)
	}
	if n := logs.FilterMessageSnippet("failing open").Len(); n != 1 {
		t.Errorf("%d degradation warnings for 60 requests, want 1", n)
	}

	if _, err := testenv.Start(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	// With no request at all, the limiter finds Redis back by itself: a
	// route seldom taken must not report Redis down until its next one.
	probes := l.probes.Load()
	deadline := time.Now().Add(10 * time.Second)
	for l.downUntil.Load() != 0 || testutil.ToFloat64(metrics.redisUp) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("Redis back, no request: still marked down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l.probes.Load() != probes {
		t.Fatal("a request probed Redis, though none was made")
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		d := l.Take(context.Background(), acct, acB, false)
		if d.Source == SourceRedis {
			break // limiting by Redis resumed by itself
		}
		if time.Now().After(deadline) {
			t.Fatal("limiter did not return to Redis")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A call that began during an outage and failed after Redis had answered
// a later one says nothing about Redis now: it must not switch Redis off
// again (that left the gauge at 0 and limiting off for a second after
// every recovery).
func TestAFailureOlderThanASuccessDoesNotMarkRedisDown(t *testing.T) {
	t.Parallel()
	env, dir := testenv.Private(t, "redis")
	rdb := redis.NewClient(&redis.Options{Addr: env["GUARDIAN_REDIS_ADDR"], Password: env["GUARDIAN_REDIS_PASSWORD"], MaxRetries: -1, DialerRetries: 1, DialTimeout: 100 * time.Millisecond})
	l := NewLimiter(rdb, "t:", 100*time.Millisecond, nil)
	t.Cleanup(func() { _ = l.Close() })
	base := time.Now()
	var at atomic.Int64 // the clock, in ns after base
	l.now = func() time.Time { return base.Add(time.Duration(at.Load())) }
	keys, b := []string{l.AccountKey("c")}, []Bucket{{Capacity: 1e9, Rate: 1e9}}

	at.Store(int64(10 * time.Second))
	if d := l.Take(context.Background(), keys, b, false); d.Source != SourceRedis {
		t.Fatalf("with Redis: %+v", d)
	}
	if err := testenv.Stop(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	at.Store(int64(9 * time.Second)) // began before the success above
	if d := l.Take(context.Background(), keys, b, false); d.Source != SourceOpen {
		t.Fatalf("Redis down: %+v", d)
	}
	if l.downUntil.Load() != 0 {
		t.Fatal("a failure older than the last success marked Redis down")
	}
	at.Store(int64(11 * time.Second)) // began after it: Redis is down now
	l.Take(context.Background(), keys, b, false)
	if l.downUntil.Load() == 0 {
		t.Fatal("a fresh failure did not mark Redis down")
	}
}

// A Redis that answers slower than the limiter's deadline (paused, on a
// Redis of the test's own) is as good as down: the decision fails open
// within the deadline, Redis is marked down, and once it answers again
// limiting resumes.
func TestSlowRedisFailsOpen(t *testing.T) {
	// Not parallel: it moves the shared redis_up gauge, which
	// TestFailsOpenWhileRedisIsDownAndRecovers reads.
	env, _ := testenv.Private(t, "redis")
	opts := &redis.Options{Addr: env["GUARDIAN_REDIS_ADDR"], Password: env["GUARDIAN_REDIS_PASSWORD"], MaxRetries: -1}
	l := NewLimiter(redis.NewClient(opts), "slow:", 50*time.Millisecond, nil)
	t.Cleanup(func() { _ = l.Close() })
	keys, b := []string{l.AccountKey("slow")}, []Bucket{{Capacity: 5, Rate: 1}}
	ctx := context.Background()
	if d := l.Take(ctx, keys, b, false); d.Source != SourceRedis {
		t.Fatalf("before the pause: %+v", d)
	}
	admin := redis.NewClient(opts)
	defer admin.Close()
	if err := admin.Do(ctx, "CLIENT", "PAUSE", "1500", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	// A caller whose own deadline, sooner than the limiter's, passes
	// (before its context says so: the wait's timer can fire first) fails
	// open alone: Redis is not marked down for everyone.
	if d := l.Take(deadlineOnly{ctx, time.Now().Add(5 * time.Millisecond)}, keys, b, false); !d.Allowed || d.Source != SourceOpen {
		t.Fatalf("a caller's deadline passed: %+v, want failed open", d)
	}
	if l.downUntil.Load() != 0 {
		t.Fatal("a caller's own deadline marked Redis down")
	}
	start := time.Now()
	d := l.Take(ctx, keys, b, false)
	if took := time.Since(start); !d.Allowed || d.Source != SourceOpen || took > time.Second {
		t.Fatalf("paused Redis: %+v after %v, want failed open at the 50 ms deadline", d, took)
	}
	if l.downUntil.Load() == 0 {
		t.Fatal("a decision past its deadline did not mark Redis down")
	}
	time.Sleep(time.Until(start.Add(1600 * time.Millisecond)))
	l.now = func() time.Time { return time.Now().Add(probeEvery) }
	if d := l.Take(ctx, keys, b, false); d.Source != SourceRedis || !d.Allowed {
		t.Fatalf("after the pause: %+v, want Redis deciding again", d)
	}
}

// deadlineOnly has a deadline but never reports it passed: a context
// whose wait ended by the deadline before the context noticed.
type deadlineOnly struct {
	context.Context
	d time.Time
}

func (c deadlineOnly) Deadline() (time.Time, bool) { return c.d, true }

func TestDecodeRefusesShortReplies(t *testing.T) {
	if _, err := decode([]int64{1, 2}, []Bucket{{1, 1}}); !errors.Is(err, errReply) {
		t.Fatalf("err = %v", err)
	}
}

func TestConcurrentDecisionsShareRoundTripsAndStayExact(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	ctx := context.Background()
	readsBefore := infoStat(t, l, "total_reads_processed")
	const n = 200
	keys, b := []string{l.IPKey("198.51.100.50")}, []Bucket{{Capacity: 150, Rate: 0.001}}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := l.Take(ctx, keys, b, false); d.Allowed {
				allowed.Add(1)
			} else if d.Source != SourceRedis {
				t.Errorf("decision from %s", d.Source)
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 150 {
		t.Fatalf("%d of %d allowed from a bucket of 150", allowed.Load(), n)
	}
	reads := infoStat(t, l, "total_reads_processed") - readsBefore
	t.Logf("%d decisions took %d reads by Redis", n, reads)
	if reads >= n {
		t.Errorf("%d reads for %d concurrent decisions: nothing was pipelined", reads, n)
	}
}

// infoStat reads a counter from Redis INFO stats.
func infoStat(t *testing.T, l *Limiter, name string) int64 {
	t.Helper()
	info, err := l.rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in INFO", name)
	return 0
}

// Closing a limiter (a config reload replaces it) while decisions are
// queued or in flight: every one returns, answered by Redis or let through
// (per-IP ones by the in-memory buckets), none waits for its deadline, and
// Redis is not reported down for it.
func TestClosingWithDecisionsInFlight(t *testing.T) {
	t.Parallel()
	r := testenv.NewRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password, MaxRetries: -1})
	l := NewLimiter(rdb, r.Prefix, time.Hour, nil) // a deadline no decision may wait for
	b := []Bucket{{Capacity: 1e9, Rate: 1e9}}
	const n = 400
	var wg sync.WaitGroup
	decisions := make(chan Decision, n+1)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			decisions <- l.Take(context.Background(), []string{l.IPKey(fmt.Sprintf("198.51.100.%d", i%200))}, b, i%2 == 0)
		}()
	}
	time.Sleep(time.Millisecond) // some queued, some sent, some not yet asked
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("decisions still waiting 30 s after Close (their deadline is an hour)")
	}
	decisions <- l.Take(context.Background(), []string{l.IPKey("198.51.100.250")}, b, false) // after Close
	close(decisions)
	bySource := map[string]int{}
	for d := range decisions {
		if !d.Allowed {
			t.Fatalf("refused: %+v", d)
		}
		bySource[d.Source]++
	}
	if bySource[SourceRedis]+bySource[SourceOpen]+bySource[SourceLocal] != n+1 {
		t.Fatalf("decisions by source: %v", bySource)
	}
	if l.downUntil.Load() != 0 {
		t.Fatal("closing the limiter marked Redis down")
	}
	t.Logf("decisions by source: %v", bySource)
}

// A request whose own context ends while its decision is pending (the
// client went away) says nothing about Redis: the limiter must not fail
// open for everyone else because of it. Otherwise a client could switch
// limiting off by closing its connections.
func TestAbandonedRequestDoesNotMarkRedisDown(t *testing.T) {
	// Not parallel: it counts the decisions of the whole package.
	l, _ := newTestLimiter(t)
	keys, b := []string{l.IPKey("198.51.100.30")}, []Bucket{{Capacity: 5, Rate: 1}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	open0, abandoned0 := testutil.ToFloat64(metrics.decisions.WithLabelValues(SourceOpen)), testutil.ToFloat64(metrics.decisions.WithLabelValues(sourceAbandoned))
	for range 20 {
		l.Take(ctx, keys, b, false)
	}
	if l.downUntil.Load() != 0 {
		t.Fatal("abandoned requests marked Redis down")
	}
	// Counted apart: an alert on failing open must not fire for them.
	abandoned := testutil.ToFloat64(metrics.decisions.WithLabelValues(sourceAbandoned)) - abandoned0
	if open := testutil.ToFloat64(metrics.decisions.WithLabelValues(SourceOpen)) - open0; abandoned != 20 || open != 0 {
		t.Errorf("decisions counted as abandoned %v, as open %v; want 20 and 0", abandoned, open)
	}
	if d := l.Take(context.Background(), keys, b, false); d.Source != SourceRedis {
		t.Fatalf("the next request was decided by %s, want Redis", d.Source)
	}
}

// The in-memory buckets (Redis down) stay bounded; making room forgets
// full buckets, not the emptied bucket of an address that was guessing.
func TestLocalBucketsForgetFullOnesFirst(t *testing.T) {
	lb := newLocalBuckets()
	shape, quick := []Bucket{{Capacity: 10, Rate: 0.1}}, []Bucket{{Capacity: 10, Rate: 100}}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	guessers := 20
	for g := range guessers {
		for range 10 {
			lb.take(now, []string{fmt.Sprintf("guesser-%d", g)}, shape)
		}
	}
	for i := range maxLocalBuckets - guessers { // the map is full
		lb.take(now, []string{fmt.Sprintf("passer-by-%d", i)}, quick)
	}
	// A moment later the passers-by's buckets are full again; the
	// guessers' are not.
	now = now.Add(200 * time.Millisecond)
	lb.take(now, []string{"one-more"}, quick)
	if len(lb.m) > maxLocalBuckets {
		t.Fatalf("%d buckets kept", len(lb.m))
	}
	for g := range guessers {
		if d := lb.take(now, []string{fmt.Sprintf("guesser-%d", g)}, shape); d.Allowed {
			t.Fatalf("guesser %d allowed after its empty bucket was forgotten: %+v", g, d)
		}
	}
}

// Once Redis is back, an in-memory bucket that only went on from Redis's
// replies (nothing spent while it was away) never refuses what Redis
// allows: it keeps what Redis left, not the reply's whole tokens, which
// are up to one below. The replies are the script's, computed here the
// way bucket.lua computes them.
func TestReconcileIsNoStricterThanRedis(t *testing.T) {
	b := []Bucket{{Capacity: 5, Rate: 10}}
	keys := []string{"k"}
	lb := newLocalBuckets()
	start := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	tokens, ms := b[0].Capacity, int64(0)
	for i := range 2000 {
		dt := rng.Int64N(150)
		ms += dt
		tokens = math.Min(b[0].Capacity, tokens+float64(dt)*b[0].Rate/1000)
		allowed := int64(0)
		if tokens >= 1 {
			allowed, tokens = 1, tokens-1
		}
		retry := int64(0)
		if tokens < 1 {
			retry = int64(math.Ceil((1 - tokens) * 1000 / b[0].Rate))
		}
		full := int64(math.Ceil((b[0].Capacity - tokens) * 1000 / b[0].Rate))
		d, err := decode([]int64{allowed, int64(math.Floor(tokens)), full, retry}, b)
		if err != nil {
			t.Fatal(err)
		}
		got := lb.reconcile(start.Add(time.Duration(ms)*time.Millisecond), keys, b, d)
		if got.Allowed != (allowed == 1) {
			t.Fatalf("request %d: Redis allowed=%d with %.3f tokens left, in memory %+v", i, allowed, tokens, got)
		}
	}
}

// Once Redis has been marked down, one decision per probeEvery asks it
// again; the others decide without it instead of each waiting out the
// deadline on a Redis that hangs.
func TestOneDecisionProbesARedisMarkedDown(t *testing.T) {
	// Not parallel: it moves the shared redis_up gauge, which
	// TestFailsOpenWhileRedisIsDownAndRecovers reads.
	env, _ := testenv.Private(t, "redis")
	opts := &redis.Options{Addr: env["GUARDIAN_REDIS_ADDR"], Password: env["GUARDIAN_REDIS_PASSWORD"], MaxRetries: -1}
	l := NewLimiter(redis.NewClient(opts), "probe:", 50*time.Millisecond, nil)
	t.Cleanup(func() { _ = l.Close() })
	admin := redis.NewClient(opts)
	defer admin.Close()
	ctx := context.Background()
	if err := admin.Do(ctx, "CLIENT", "PAUSE", "2000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	l.downUntil.Store(l.nanos(time.Now().Add(-time.Millisecond))) // down, due for a probe
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := l.Take(ctx, []string{l.IPKey(fmt.Sprintf("192.0.2.%d", i))}, []Bucket{{Capacity: 5, Rate: 1}}, true); !d.Allowed {
				t.Errorf("refused: %+v", d)
			}
		}()
	}
	wg.Wait()
	if n := l.probes.Load(); n != 1 {
		t.Fatalf("%d of 20 decisions asked a Redis marked down, want 1", n)
	}
}

// A Redis that flaps is announced back at most once per warnEvery: the
// log must not gain a line per recovery.
func TestRecoveryIsLoggedOncePerInterval(t *testing.T) {
	t.Parallel()
	r := testenv.NewRedis(t)
	core, logs := observer.New(zap.InfoLevel)
	l := NewLimiter(redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password}), r.Prefix, time.Second, zap.New(core))
	t.Cleanup(func() { _ = l.Close() })
	keys, b := []string{l.AccountKey("flap")}, []Bucket{{Capacity: 100, Rate: 1}}
	for range 3 {
		l.downUntil.Store(l.nanos(time.Now().Add(-time.Millisecond))) // marked down, due for a probe
		if d := l.Take(context.Background(), keys, b, false); d.Source != SourceRedis {
			t.Fatalf("probe: %+v", d)
		}
	}
	if n := logs.FilterMessageSnippet("answers again").Len(); n != 1 {
		t.Fatalf("%d recovery messages for three recoveries in a moment, want 1", n)
	}
}

// The prober asks as a request does, with the bucket script: a Redis that
// answers PING but refuses the script's writes (here: no replica to
// write to) stays marked down, and the mark clears once it takes them.
// Not parallel: redis_up is process-wide.
func TestTheProberAsksWithTheScript(t *testing.T) {
	env, _ := testenv.Private(t, "redis")
	opts := &redis.Options{Addr: env["GUARDIAN_REDIS_ADDR"], Password: env["GUARDIAN_REDIS_PASSWORD"], MaxRetries: -1}
	l := NewLimiter(redis.NewClient(opts), "probe:", 200*time.Millisecond, nil)
	t.Cleanup(func() { _ = l.Close() })
	admin := redis.NewClient(opts)
	defer admin.Close()
	ctx := context.Background()
	refuseWrites := func(n string) {
		t.Helper()
		if err := admin.ConfigSet(ctx, "min-replicas-to-write", n).Err(); err != nil {
			t.Fatal(err)
		}
	}
	refuseWrites("1")
	t.Cleanup(func() { _ = admin.ConfigSet(ctx, "min-replicas-to-write", "0").Err() })
	keys, b := []string{l.AccountKey("c")}, []Bucket{{Capacity: 5, Rate: 1}}
	if d := l.Take(ctx, keys, b, false); d.Source != SourceOpen {
		t.Fatalf("a Redis refusing writes: %+v, want failed open", d)
	}
	if l.downUntil.Load() == 0 {
		t.Fatal("a refused script did not mark Redis down")
	}
	if err := admin.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * probeEvery) // the prober has asked twice or more
	if l.downUntil.Load() == 0 {
		t.Fatal("Redis answering PING but refusing writes was taken as back")
	}
	refuseWrites("0")
	deadline := time.Now().Add(10 * time.Second)
	for l.downUntil.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("Redis taking writes again, no request: still marked down")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// When Redis stops answering, a brute-force surface's in-memory bucket
// goes on from what Redis left, not from full, and what it allowed meanwhile
// still counts once Redis is back: a Redis that flaps under a flood must
// not give an address its budget twice.
func TestTheLocalBucketGoesOnFromRedis(t *testing.T) {
	// Not parallel: it moves the shared redis_up gauge, as
	// TestSlowRedisFailsOpen does.
	env, _ := testenv.Private(t, "redis")
	opts := &redis.Options{Addr: env["GUARDIAN_REDIS_ADDR"], Password: env["GUARDIAN_REDIS_PASSWORD"], MaxRetries: -1}
	l := NewLimiter(redis.NewClient(opts), "mirror:", 50*time.Millisecond, nil)
	t.Cleanup(func() { _ = l.Close() })
	keys, b := []string{l.IPKey("198.51.100.9")}, []Bucket{{Capacity: 10, Rate: 0.001}}
	ctx := context.Background()
	for i := range 7 {
		if d := l.Take(ctx, keys, b, true); !d.Allowed || d.Source != SourceRedis {
			t.Fatalf("attempt %d through Redis: %+v", i, d)
		}
	}
	admin := redis.NewClient(opts)
	defer admin.Close()
	if err := admin.Do(ctx, "CLIENT", "PAUSE", "2000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	var allowed int
	for range 10 {
		d := l.Take(ctx, keys, b, true)
		if d.Source != SourceLocal {
			t.Fatalf("with Redis paused: %+v", d)
		}
		if d.Allowed {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("%d attempts allowed without Redis after 7 of 10 with it, want 3", allowed)
	}
	// Redis back, it still holds the 3 spent while it was away: they
	// count, and the address stays refused.
	time.Sleep(2100 * time.Millisecond)
	l.now = func() time.Time { return time.Now().Add(probeEvery) }
	d := l.Take(ctx, keys, b, true)
	if d.Source != SourceRedis || d.Allowed || d.RetryAfter <= 0 {
		t.Fatalf("with Redis back: %+v, want refused (the bucket was spent without it)", d)
	}
}
