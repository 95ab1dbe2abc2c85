package notify

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/notify/notifytest"
)

func fast(cfg Config) Config {
	cfg.Backoff, cfg.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
	return cfg
}

func TestTransientMailFailuresAreRetriedWithABound(t *testing.T) {
	relay := notifytest.StartRelay(t, nil, "", "")
	relay.SetFail(func(n int) error {
		if n <= 2 {
			return &smtp.SMTPError{Code: 451, Message: "try again later"}
		}
		return nil
	})
	core, logs := observer.New(zap.InfoLevel)
	n, err := New(fast(Config{SMTP: SMTPConfig{Addr: relay.Addr, From: "security@guardian.test"}, Log: zap.New(core)}))
	if err != nil {
		t.Fatal(err)
	}
	n.Send(Notice{Event: "test", To: []string{"ada@example.com"}, Subject: "s", Text: "t"})
	n.Close(context.Background())
	if s := n.Stats(); s.Delivered != 1 || s.Retried != 2 || s.Failed != 0 {
		t.Fatalf("stats %+v, want delivered after two retries", s)
	}
	if len(relay.Messages()) != 1 {
		t.Fatalf("%d messages", len(relay.Messages()))
	}
	if logs.FilterMessage("notify: delivery failed, retrying").Len() != 2 {
		t.Fatalf("retries not logged: %v", logs.All())
	}

	// A permanent refusal is tried once; a lasting transient one Attempts times.
	relay.SetFail(func(int) error { return &smtp.SMTPError{Code: 550, Message: "no such user"} })
	n, _ = New(fast(Config{SMTP: SMTPConfig{Addr: relay.Addr, From: "security@guardian.test"}, Log: zap.New(core)}))
	n.Send(Notice{Event: "test", To: []string{"ada@example.com"}, Subject: "s", Text: "t"})
	n.Close(context.Background())
	if s := n.Stats(); s.Failed != 1 || s.Retried != 0 {
		t.Fatalf("permanent failure: %+v", s)
	}
	relay.SetFail(func(int) error { return &smtp.SMTPError{Code: 421, Message: "busy"} })
	n, _ = New(fast(Config{SMTP: SMTPConfig{Addr: relay.Addr, From: "security@guardian.test"}, Attempts: 3}))
	n.Send(Notice{Event: "test", To: []string{"ada@example.com"}, Subject: "s", Text: "t"})
	n.Close(context.Background())
	if s := n.Stats(); s.Failed != 1 || s.Retried != 2 {
		t.Fatalf("lasting transient failure: %+v", s)
	}
	failed := logs.FilterMessage("notify: delivery failed").All()
	if len(failed) == 0 || failed[len(failed)-1].ContextMap()["failed_total"] != int64(1) {
		t.Fatalf("failure not logged with its counter: %v", failed)
	}
	for _, e := range logs.All() {
		if strings.Contains(e.Message+strings.Join(keysOf(e.ContextMap()), ","), "ada@example.com") {
			t.Fatalf("a recipient's address reached the log: %v", e)
		}
	}
}

func keysOf(m map[string]any) []string {
	var out []string
	for k, v := range m {
		out = append(out, k)
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// Send returns at once however slow the receiver; Close gives up at its
// deadline and counts what it abandoned.
func TestSendNeverWaitsAndCloseIsBounded(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	n, err := New(Config{Allow: []string{"127.0.0.1"}, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 5 {
		n.Send(Notice{Event: "test", Webhooks: []string{slow.URL}})
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("Send blocked for %s", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	n.Close(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %s", d)
	}
	if s := n.Stats(); s.Failed != 5 || s.Delivered != 0 {
		t.Fatalf("stats after an abandoned close: %+v", s)
	}
	n.Send(Notice{Event: "late", Webhooks: []string{slow.URL}})
	if s := n.Stats(); s.Dropped != 1 {
		t.Fatalf("a notice after Close: %+v", s)
	}
}

func TestQueueIsBounded(t *testing.T) {
	n, _ := New(Config{Allow: []string{"127.0.0.1"}, Workers: 1, QueueSize: 2})
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-block }))
	defer slow.Close()
	for range 10 {
		n.Send(Notice{Event: "test", Webhooks: []string{slow.URL}})
	}
	close(block)
	n.Close(context.Background())
	// One in the worker's hands, two queued, the rest dropped.
	if s := n.Stats(); s.Dropped < 7 || s.Delivered+s.Failed+s.Dropped != 10 {
		t.Fatalf("stats: %+v", s)
	}
}

func TestLoadConfig(t *testing.T) {
	env := map[string]string{EnvSMTPAddr: "mail.example.com:587", EnvSMTPFrom: "security@example.com", EnvWebhookAllow: "10.0.0.0/8, hooks.internal"}
	cfg := LoadConfig(config.New(func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	if cfg.SMTP.Addr != "mail.example.com:587" || cfg.SMTP.From != "security@example.com" || len(cfg.Allow) != 2 || cfg.Allow[1] != "hooks.internal" {
		t.Fatalf("%+v", cfg)
	}
	n, err := New(Config{})
	if err != nil || n.MailEnabled() {
		t.Fatalf("no relay: %v", err)
	}
	n.Close(context.Background())
	if _, err := New(Config{Allow: []string{"what?"}}); err == nil || !strings.Contains(err.Error(), EnvWebhookAllow) {
		t.Fatalf("bad allow-list: %v", err)
	}
}

// A relay refusing one recipient keeps the notice from nobody else, and
// the others get it once.
func TestOneRefusedRecipientDoesNotStopTheOthers(t *testing.T) {
	relay := notifytest.StartRelay(t, nil, "", "")
	relay.SetRefuseRecipient(func(to string) error {
		if strings.HasPrefix(to, "gone@") {
			return &smtp.SMTPError{Code: 550, Message: "no such user"}
		}
		return nil
	})
	n, err := New(fast(Config{SMTP: SMTPConfig{Addr: relay.Addr, From: "security@guardian.test"}}))
	if err != nil {
		t.Fatal(err)
	}
	n.Send(Notice{Event: "test", To: []string{"ada@example.com", "gone@example.com", "bob@example.com"}, Subject: "s", Text: "t"})
	n.Close(context.Background())
	got := map[string]int{}
	for _, m := range relay.Messages() {
		for _, to := range m.To {
			got[to]++
		}
	}
	if got["ada@example.com"] != 1 || got["bob@example.com"] != 1 || len(got) != 2 {
		t.Fatalf("delivered to %v, want ada and bob once each", got)
	}
	if s := n.Stats(); s.Delivered != 2 || s.Failed != 1 || s.Retried != 0 {
		t.Fatalf("stats %+v, want 2 delivered and the refused one failed once", s)
	}
}

// A webhook's URL (whose path is often its secret) never reaches the log,
// also when the call fails in the HTTP client.
func TestWebhookURLStaysOutOfTheLog(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // nothing listens: the connection is refused
	core, logs := observer.New(zap.DebugLevel)
	n, err := New(fast(Config{Allow: []string{"127.0.0.1/32"}, Attempts: 2, Log: zap.New(core)}))
	if err != nil {
		t.Fatal(err)
	}
	const secret = "T000/B000/XXXXsecretXXXX"
	n.Send(Notice{Event: "test", Webhooks: []string{"http://" + ln.Addr().String() + "/services/" + secret}})
	n.Close(context.Background())
	if s := n.Stats(); s.Failed != 1 {
		t.Fatalf("stats %+v", s)
	}
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + fmt.Sprint(v)
		}
		if strings.Contains(line, "secret") {
			t.Fatalf("the webhook's secret path reached the log: %s", line)
		}
	}
	if logs.FilterMessage("notify: delivery failed").Len() != 1 {
		t.Fatalf("the failure was not logged: %v", logs.All())
	}
}

func TestTransientWebhookFailuresAreRetried(t *testing.T) {
	f := newFlaky(t, "", 503, 502, 200)
	core, logs := observer.New(zap.DebugLevel)
	n, err := New(fast(Config{Allow: []string{"127.0.0.1/32"}, Attempts: 4, Log: zap.New(core)}))
	if err != nil {
		t.Fatal(err)
	}
	n.Send(Notice{Event: "test", Webhooks: []string{f.URL}})
	n.Close(context.Background())
	if s := n.Stats(); s.Delivered != 1 || s.Retried != 2 || s.Failed != 0 || f.hits.Load() != 3 {
		t.Fatalf("stats %+v after %d attempts, want delivered at the third", s, f.hits.Load())
	}
	if logs.FilterMessage("notify: delivery failed, retrying").Len() != 2 {
		t.Fatalf("retries not logged: %v", logs.All())
	}
	if d := logs.FilterMessage("notify: delivered").All(); len(d) != 1 || d[0].ContextMap()["attempts"] != int64(3) {
		t.Fatalf("delivery not logged with its attempts: %v", d)
	}

	// A lasting failure: Attempts tries, then one failure.
	f = newFlaky(t, "", 500)
	n, _ = New(fast(Config{Allow: []string{"127.0.0.1/32"}, Attempts: 3}))
	n.Send(Notice{Event: "test", Webhooks: []string{f.URL}})
	n.Close(context.Background())
	if s := n.Stats(); s.Failed != 1 || s.Retried != 2 || f.hits.Load() != 3 {
		t.Fatalf("stats %+v after %d attempts", s, f.hits.Load())
	}
}
