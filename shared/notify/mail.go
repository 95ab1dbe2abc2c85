package notify

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"os"
	"regexp"
	"strings"
	"time"
)

// MailTimeout bounds one SMTP conversation.
const MailTimeout = 30 * time.Second

// SMTPConfig is how to reach the mail relay.
type SMTPConfig struct {
	// Addr is host:port of the relay (GUARDIAN_SMTP_ADDR).
	Addr string
	// From is the envelope and header sender (GUARDIAN_SMTP_FROM).
	From string
	// User and Password, when User is set, authenticate with PLAIN, which
	// net/smtp sends only over TLS or to localhost.
	User, Password string
	// TLS is the base configuration for STARTTLS (its ServerName is set
	// to the relay's host). nil: the system's roots, TLS 1.2 or later.
	TLS *tls.Config
	// TLSMode (GUARDIAN_SMTP_TLS) is what a relay on another host that
	// offers no STARTTLS gets: TLSRequired (the default, also for ""):
	// no message, an error the sender retries; TLSOpportunistic: the
	// message in plain text (a relay reached over a private link).
	TLSMode string
}

// Values of SMTPConfig.TLSMode.
const (
	TLSRequired      = "required"
	TLSOpportunistic = "opportunistic"
)

// Mail is one message.
type Mail struct {
	To      []string
	Subject string
	Text    string // plain text, UTF-8
}

// Mailer sends mail over SMTP, upgrading with STARTTLS whenever a relay
// on another host offers it, the certificate verified against the relay's
// name. A relay that offers STARTTLS and then fails the handshake is not
// retried in plain text. A relay on this host (a loopback address or
// localhost, the deployment's default 127.0.0.1:25) is spoken to in plain
// text unless TLS is configured: the conversation never leaves the
// machine, and a local Postfix offers STARTTLS with a self-signed
// certificate for the host's name, which would fail every message.
// A relay on another host that offers no STARTTLS gets no message unless
// TLSMode is TLSOpportunistic: otherwise anyone on the path could strip
// the offer and read every notice.
type Mailer struct {
	cfg       SMTPConfig
	host      string
	from      string // the bare address
	fromHdr   string // as the From header shows it
	localName string
	// local: the relay is on this host (loopback) and no TLS
	// configuration was given: no STARTTLS.
	local bool
	// plainOK: a relay on another host may be spoken to without TLS.
	plainOK bool
}

// isLoopbackHost reports whether host (of host:port) names this host:
// "localhost" or a loopback address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// NewMailer checks cfg and returns a mailer.
func NewMailer(cfg SMTPConfig) (*Mailer, error) {
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil || host == "" {
		return nil, fmt.Errorf("%s must be host:port", EnvSMTPAddr)
	}
	from, err := mail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("%s must be an e-mail address", EnvSMTPFrom)
	}
	if cfg.TLSMode != "" && cfg.TLSMode != TLSRequired && cfg.TLSMode != TLSOpportunistic {
		return nil, fmt.Errorf("%s must be %s or %s", EnvSMTPTLS, TLSRequired, TLSOpportunistic)
	}
	local, err := os.Hostname()
	if err != nil || local == "" || strings.ContainsAny(local, "\r\n ") {
		local = "localhost"
	}
	return &Mailer{cfg: cfg, host: host, from: from.Address, fromHdr: from.String(), localName: local,
		local: isLoopbackHost(host) && cfg.TLS == nil, plainOK: cfg.TLSMode == TLSOpportunistic}, nil
}

// Send delivers msg to its valid recipients in one SMTP transaction, so a
// recipient the relay refuses fails the whole message (Notifier sends a
// message per recipient). Errors that a retry cannot fix (a 5xx answer,
// no valid recipient) are Permanent.
func (m *Mailer) Send(ctx context.Context, msg Mail) error {
	if len(msg.To) == 0 {
		return Permanent(errors.New("mail: no recipient"))
	}
	// A malformed address (CR/LF included) is skipped rather than allowed
	// to keep the notice from the other recipients.
	to := make([]string, 0, len(msg.To))
	for _, r := range msg.To {
		if a, err := mail.ParseAddress(r); err == nil && !strings.ContainsAny(a.Address, "\r\n") {
			to = append(to, a.Address)
		}
	}
	if len(to) == 0 {
		return Permanent(errors.New("mail: no recipient is a valid e-mail address"))
	}
	body, err := m.compose(to, msg)
	if err != nil {
		return Permanent(err)
	}
	return m.deliver(ctx, to, body)
}

func (m *Mailer) deliver(ctx context.Context, to []string, body []byte) (err error) {
	ctx, cancel := context.WithTimeout(ctx, MailTimeout)
	defer cancel()
	conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", m.cfg.Addr)
	if err != nil {
		return fmt.Errorf("mail: connect: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	c, err := smtp.NewClient(conn, m.host)
	if err != nil {
		_ = conn.Close()
		return smtpErr("greeting", err)
	}
	defer c.Close()
	if err := c.Hello(m.localName); err != nil {
		return smtpErr("EHLO", err)
	}
	offered, _ := c.Extension("STARTTLS")
	if !offered && !m.local && !m.plainOK {
		// Not permanent: a relay fixed, or a path no longer stripping the
		// offer, takes the message on a later try.
		return fmt.Errorf("mail: the relay offers no STARTTLS, and %s is not %s: nothing was sent", EnvSMTPTLS, TLSOpportunistic)
	}
	if offered && !m.local {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if m.cfg.TLS != nil {
			cfg = m.cfg.TLS.Clone()
		}
		cfg.ServerName = m.host
		if err := c.StartTLS(cfg); err != nil {
			return smtpErr("STARTTLS", err)
		}
	}
	if m.cfg.User != "" {
		if err := c.Auth(smtp.PlainAuth("", m.cfg.User, m.cfg.Password, m.host)); err != nil {
			return Permanent(smtpErr("AUTH", err))
		}
	}
	if err := c.Mail(m.from); err != nil {
		return smtpErr("MAIL FROM", err)
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return smtpErr("RCPT TO", err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return smtpErr("DATA", err)
	}
	if _, err := w.Write(body); err != nil {
		return smtpErr("DATA", err)
	}
	if err := w.Close(); err != nil {
		return smtpErr("DATA", err)
	}
	// The relay has accepted the message: a failed QUIT (or a stop now)
	// must not have it sent again.
	_ = c.Quit()
	return nil
}

// addressLike matches what looks like an e-mail address in a relay's
// reply, which often echoes the recipient.
var addressLike = regexp.MustCompile(`[^\s<>"'(),;:\[\]]+@[^\s<>"'(),;:\[\]]+`)

// smtpErr names the step that failed; 5xx answers are permanent. The
// relay's text is kept without the addresses in it: errors are logged,
// addresses never are.
func smtpErr(step string, err error) error {
	var te *textproto.Error
	if errors.As(err, &te) {
		e := fmt.Errorf("mail: %s: %d %s", step, te.Code, addressLike.ReplaceAllString(te.Msg, "[address]"))
		if te.Code >= 500 {
			return Permanent(e)
		}
		return e
	}
	return fmt.Errorf("mail: %s: %w", step, err)
}

// compose renders the message: plain text in quoted-printable, headers
// free of CR and LF whatever the input.
func (m *Mailer) compose(to []string, msg Mail) ([]byte, error) {
	var b bytes.Buffer
	hdr := func(k, v string) {
		b.WriteString(k + ": " + strings.NewReplacer("\r", " ", "\n", " ").Replace(v) + "\r\n")
	}
	var id [12]byte
	_, _ = rand.Read(id[:])
	domain := m.from[strings.LastIndexByte(m.from, '@')+1:]
	hdr("From", m.fromHdr)
	hdr("To", strings.Join(to, ", "))
	hdr("Subject", mime.QEncoding.Encode("utf-8", msg.Subject))
	hdr("Date", time.Now().UTC().Format(time.RFC1123Z))
	hdr("Message-ID", "<"+hex.EncodeToString(id[:])+"@"+domain+">")
	hdr("Auto-Submitted", "auto-generated")
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", "text/plain; charset=utf-8")
	hdr("Content-Transfer-Encoding", "quoted-printable")
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	text := strings.ReplaceAll(strings.ReplaceAll(msg.Text, "\r\n", "\n"), "\n", "\r\n")
	if _, err := qp.Write([]byte(text)); err != nil {
		return nil, err
	}
	if err := qp.Close(); err != nil {
		return nil, err
	}
	b.WriteString("\r\n")
	return b.Bytes(), nil
}
