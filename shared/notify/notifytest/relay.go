// Package notifytest gives tests a real SMTP relay to send to: the
// server of github.com/emersion/go-smtp on a free loopback port, keeping
// every message it accepts, optionally with STARTTLS and AUTH PLAIN.
package notifytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Relay is a real SMTP server (github.com/emersion/go-smtp) on a free
// loopback port that keeps what it receives.
type Relay struct {
	Addr string

	mu       sync.Mutex
	fail     func(n int) error
	rcpt     func(to string) error
	messages []Received
	attempts int
	srv      *smtp.Server
	user     string
	pass     string
}

// Received is one message as the relay got it.
type Received struct {
	From    string
	To      []string
	Data    []byte
	TLS     bool
	AuthAs  string
	Header  mail.Header
	Text    string // the decoded body
	Subject string
}

// StartRelay starts a relay for t; tlsCert, when set, makes it offer
// STARTTLS (and AUTH PLAIN as user/pass, over TLS only).
func StartRelay(t testing.TB, tlsCert *tls.Certificate, user, pass string) *Relay {
	t.Helper()
	r := &Relay{user: user, pass: pass}
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &relaySession{r: r, c: c}, nil
	}))
	s.Domain = "relay.test"
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	s.MaxMessageBytes = 1 << 20
	s.ErrorLog = nopLogger{}
	if tlsCert != nil {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*tlsCert}}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Addr, r.srv = ln.Addr().String(), s
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return r
}

// SetFail makes the relay answer MAIL FROM of its nth attempt (1-based,
// counted over the relay's life) with the error fail returns; nil from
// fail, or a nil fail, lets the message through.
func (r *Relay) SetFail(fail func(n int) error) {
	r.mu.Lock()
	r.fail = fail
	r.mu.Unlock()
}

// SetRefuseRecipient makes the relay answer RCPT TO with the error
// refuse returns for that address (nil accepts it).
func (r *Relay) SetRefuseRecipient(refuse func(to string) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rcpt = refuse
}

// Messages returns what arrived so far.
func (r *Relay) Messages() []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Received(nil), r.messages...)
}

// WaitMessages waits up to d for n messages.
func (r *Relay) WaitMessages(t testing.TB, n int, d time.Duration) []Received {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if m := r.Messages(); len(m) >= n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay: %d messages after %s, want %d", len(r.Messages()), d, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...interface{}) {}
func (nopLogger) Println(...interface{})        {}

type relaySession struct {
	r    *Relay
	c    *smtp.Conn
	msg  Received
	auth string
}

func (s *relaySession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *relaySession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != s.r.user || pass != s.r.pass {
			return errors.New("invalid credentials")
		}
		s.auth = user
		return nil
	}), nil
}

func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	s.r.mu.Lock()
	s.r.attempts++
	n := s.r.attempts
	s.r.mu.Unlock()
	if s.r.user != "" && s.auth == "" {
		return smtp.ErrAuthRequired
	}
	s.r.mu.Lock()
	fail := s.r.fail
	s.r.mu.Unlock()
	if fail != nil {
		if err := fail(n); err != nil {
			return err
		}
	}
	_, isTLS := s.c.TLSConnectionState()
	s.msg = Received{From: from, TLS: isTLS, AuthAs: s.auth}
	return nil
}

func (s *relaySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.r.mu.Lock()
	refuse := s.r.rcpt
	s.r.mu.Unlock()
	if refuse != nil {
		if err := refuse(to); err != nil {
			return err
		}
	}
	s.msg.To = append(s.msg.To, to)
	return nil
}

func (s *relaySession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.Data = b
	if m, err := mail.ReadMessage(strings.NewReader(string(b))); err == nil {
		s.msg.Header = m.Header
		s.msg.Subject, _ = new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
		body, _ := io.ReadAll(quotedprintable.NewReader(m.Body))
		s.msg.Text = string(body)
	}
	s.r.mu.Lock()
	s.r.messages = append(s.r.messages, s.msg)
	s.r.mu.Unlock()
	return nil
}

func (s *relaySession) Reset()        {}
func (s *relaySession) Logout() error { return nil }

// SelfSignedCert returns a certificate for 127.0.0.1 and localhost, and a
// pool that trusts it.
func SelfSignedCert(t testing.TB) (*tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}
