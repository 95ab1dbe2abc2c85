package notify

import (
	"context"
	"crypto/tls"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/notify/notifytest"
)

func TestMailReachesTheRelayInPlainText(t *testing.T) {
	relay := notifytest.StartRelay(t, nil, "", "")
	m, err := NewMailer(SMTPConfig{Addr: relay.Addr, From: "Guardian <security@guardian.test>"})
	if err != nil {
		t.Fatal(err)
	}
	text := "Key ending Ab12 was found at https://github.com/octo/repo/blob/0123456789abcdef0123456789abcdef01234567/config/a-very-long-path/settings.env?plain=1#L3 and revoked.\nNothing else to do."
	err = m.Send(context.Background(), Mail{To: []string{"ada@example.com", "Bob <bob@example.com>"}, Subject: "Clé révoquée", Text: text})
	if err != nil {
		t.Fatal(err)
	}
	got := relay.WaitMessages(t, 1, 5*time.Second)[0]
	if got.From != "security@guardian.test" || strings.Join(got.To, ",") != "ada@example.com,bob@example.com" || got.TLS {
		t.Fatalf("envelope: %+v", got)
	}
	if got.Subject != "Clé révoquée" || got.Text != strings.ReplaceAll(text, "\n", "\r\n")+"\r\n" {
		t.Fatalf("message: subject %q text %q", got.Subject, got.Text)
	}
	if got.Header.Get("Auto-Submitted") != "auto-generated" || !strings.HasSuffix(got.Header.Get("Message-Id"), "@guardian.test>") {
		t.Fatalf("headers: %v", got.Header)
	}
}

func TestMailUpgradesWithSTARTTLSAndAuthenticates(t *testing.T) {
	cert, pool := notifytest.SelfSignedCert(t)
	relay := notifytest.StartRelay(t, cert, "guardian", "relay-password")
	m, err := NewMailer(SMTPConfig{Addr: relay.Addr, From: "security@guardian.test", User: "guardian", Password: "relay-password",
		TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Send(context.Background(), Mail{To: []string{"ada@example.com"}, Subject: "s", Text: "t"}); err != nil {
		t.Fatal(err)
	}
	got := relay.WaitMessages(t, 1, 5*time.Second)[0]
	if !got.TLS || got.AuthAs != "guardian" {
		t.Fatalf("not over TLS or not authenticated: %+v", got)
	}

	// A relay on another host whose certificate does not verify gets no
	// mail, and no fallback to plain text. (The test's relay listens on
	// loopback: the mailer is told it is another host's.)
	untrusted, err := NewMailer(SMTPConfig{Addr: relay.Addr, From: "security@guardian.test"})
	if err != nil {
		t.Fatal(err)
	}
	untrusted.local = false
	if err := untrusted.Send(context.Background(), Mail{To: []string{"ada@example.com"}, Subject: "s", Text: "t"}); err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("untrusted relay: %v", err)
	}
	if n := len(relay.Messages()); n != 1 {
		t.Fatalf("%d messages; the untrusted send must not arrive", n)
	}
}

// A relay on this host (the deployment's default, 127.0.0.1:25) that
// offers STARTTLS with a certificate no root vouches for, as a stock
// Postfix's self-signed one: the mail goes in plain text over loopback
// instead of failing every notice for good.
func TestALocalRelayIsSpokenToInPlainText(t *testing.T) {
	cert, _ := notifytest.SelfSignedCert(t)
	relay := notifytest.StartRelay(t, cert, "", "")
	for _, addr := range []string{relay.Addr, strings.Replace(relay.Addr, "127.0.0.1", "localhost", 1)} {
		m, err := NewMailer(SMTPConfig{Addr: addr, From: "security@guardian.test"})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Send(context.Background(), Mail{To: []string{"ada@example.com"}, Subject: "s", Text: "t"}); err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
	}
	for _, got := range relay.WaitMessages(t, 2, 5*time.Second) {
		if got.TLS {
			t.Fatalf("over TLS: %+v", got)
		}
	}
	for host, want := range map[string]bool{"127.0.0.1": true, "127.3.2.1": true, "::1": true, "localhost": true, "LOCALHOST.": true,
		"relay.example.com": false, "10.0.0.5": false, "::ffff:127.0.0.1": true, "localhost.example.com": false} {
		if got := isLoopbackHost(host); got != want {
			t.Errorf("isLoopbackHost(%q) = %v", host, got)
		}
	}
}

func TestMailRefusesHeaderInjectionAndBadRecipients(t *testing.T) {
	relay := notifytest.StartRelay(t, nil, "", "")
	m, _ := NewMailer(SMTPConfig{Addr: relay.Addr, From: "security@guardian.test"})
	err := m.Send(context.Background(), Mail{To: []string{"ada@example.com\r\nBcc: eve@example.com"}, Subject: "s", Text: "t"})
	if err == nil || !IsPermanent(err) {
		t.Fatalf("recipient with CRLF: %v", err)
	}
	if err := m.Send(context.Background(), Mail{To: []string{"not an address", "ada@example.com"}, Subject: "hi\r\nBcc: eve@example.com", Text: "t"}); err != nil {
		t.Fatal(err)
	}
	got := relay.WaitMessages(t, 1, 5*time.Second)[0]
	if strings.Join(got.To, ",") != "ada@example.com" || got.Header.Get("Bcc") != "" {
		t.Fatalf("header injection: %+v", got)
	}
	if _, err := NewMailer(SMTPConfig{Addr: "nohost", From: "x@y.z"}); err == nil || !strings.Contains(err.Error(), EnvSMTPAddr) {
		t.Fatalf("bad address: %v", err)
	}
	if _, err := NewMailer(SMTPConfig{Addr: "127.0.0.1:25", From: "not an address"}); err == nil || !strings.Contains(err.Error(), EnvSMTPFrom) {
		t.Fatalf("bad sender: %v", err)
	}
}

// A relay's reply often echoes the recipient; the error (which is logged)
// keeps the reply without it.
func TestRelayRepliesLoseTheirAddresses(t *testing.T) {
	for _, tc := range []struct {
		msg       string
		permanent bool
	}{
		{"5.1.1 <alice@corp.example>: Recipient address rejected: User unknown", true},
		{"4.2.0 bob.smith+tag@sub.example.org greylisted, try again later", false},
		{"5.7.1 Relaying denied for \"carol@x.example\"", true},
	} {
		code := 450
		if tc.permanent {
			code = 550
		}
		err := smtpErr("RCPT TO", &textproto.Error{Code: code, Msg: tc.msg})
		if strings.Contains(err.Error(), "@") || !strings.Contains(err.Error(), "[address]") {
			t.Errorf("%q: %v", tc.msg, err)
		}
		if IsPermanent(err) != tc.permanent {
			t.Errorf("%q: permanent %v, want %v", tc.msg, IsPermanent(err), tc.permanent)
		}
	}
}

// A relay on another host that offers no STARTTLS (or one on the path
// that strips the offer) gets nothing, unless plain text is allowed for a
// relay reached over a private link.
func TestARemoteRelayWithoutSTARTTLSGetsNothingUnlessAllowed(t *testing.T) {
	relay := notifytest.StartRelay(t, nil, "", "")
	for _, mode := range []string{"", TLSRequired, TLSOpportunistic} {
		m, err := NewMailer(SMTPConfig{Addr: relay.Addr, From: "security@guardian.test", TLSMode: mode})
		if err != nil {
			t.Fatal(err)
		}
		m.local = false // the test's relay listens on loopback: told it is another host's
		err = m.Send(context.Background(), Mail{To: []string{"ada@example.com"}, Subject: "s", Text: "t"})
		if mode == TLSOpportunistic {
			if err != nil {
				t.Fatalf("opportunistic: %v", err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "STARTTLS") || IsPermanent(err) {
			t.Fatalf("mode %q: %v, want a retryable error naming STARTTLS", mode, err)
		}
	}
	if got := relay.WaitMessages(t, 1, 5*time.Second); len(got) != 1 || got[0].TLS {
		t.Fatalf("messages %+v, want the opportunistic one alone, in plain text", got)
	}
	if _, err := NewMailer(SMTPConfig{Addr: relay.Addr, From: "security@guardian.test", TLSMode: "sometimes"}); err == nil || !strings.Contains(err.Error(), EnvSMTPTLS) {
		t.Fatalf("an unknown mode: %v", err)
	}
}
