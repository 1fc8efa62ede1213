// Package mail sends the audit's notices over SMTP: STARTTLS and
// authentication when configured, retries with back-off, and every
// failure logged and counted, never silently dropped.
package mail

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/smtp"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Config is an SMTP relay and the notice's envelope.
type Config struct {
	Host     string
	Port     int
	From     string
	To       []string
	Username string
	Password string
	// StartTLS requires the server to upgrade the connection before
	// anything else is said (and before credentials are sent).
	StartTLS bool
	// CAFile adds a CA to trust for the relay's certificate.
	CAFile string
}

// Enabled reports whether mail is configured at all.
func (c Config) Enabled() bool { return c.Host != "" && len(c.To) > 0 && c.From != "" }

// Sender sends mail.
type Sender struct {
	cfg   Config
	roots *x509.CertPool
	log   *slog.Logger

	sent     atomic.Int64
	failures atomic.Int64
}

// New returns a Sender.
func New(cfg Config, log *slog.Logger) (*Sender, error) {
	if cfg.Port == 0 {
		cfg.Port = 587
	}
	s := &Sender{cfg: cfg, log: log}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("smtp-ca-file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("smtp-ca-file %s: no PEM certificate", cfg.CAFile)
		}
		s.roots = pool
	}
	return s, nil
}

// Sent and Failures count deliveries and failed attempts.
func (s *Sender) Sent() int64     { return s.sent.Load() }
func (s *Sender) Failures() int64 { return s.failures.Load() }

// Send tries to deliver one message up to attempts times, waiting backoff,
// then twice as long, between tries. Each failure is logged and counted.
func (s *Sender) Send(ctx context.Context, subject, body string, attempts int, backoff time.Duration) error {
	var err error
	for i := 0; i < attempts; i++ {
		if err = s.sendOnce(ctx, subject, body); err == nil {
			s.sent.Add(1)
			return nil
		}
		s.failures.Add(1)
		s.log.Error("sending mail failed", "attempt", i+1, "of", attempts, "to", s.cfg.To, "err", err)
		if i == attempts-1 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff << i):
		}
	}
	return fmt.Errorf("mail not delivered after %d attempts: %w", attempts, err)
}

func (s *Sender) sendOnce(ctx context.Context, subject, body string) error {
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	c, err := smtp.NewClient(conn, s.cfg.Host)
	if err != nil {
		conn.Close()
		return err
	}
	defer c.Close()
	if s.cfg.StartTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return errors.New("the SMTP server does not offer STARTTLS")
		}
		if err := c.StartTLS(&tls.Config{ServerName: s.cfg.Host, RootCAs: s.roots, MinVersion: tls.VersionTLS12}); err != nil {
			return fmt.Errorf("starttls: %w", err)
		}
	}
	if s.cfg.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", s.cfg.Username, s.cfg.Password, s.cfg.Host)); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	if err := c.Mail(s.cfg.From); err != nil {
		return err
	}
	for _, to := range s.cfg.To {
		if err := c.Rcpt(to); err != nil {
			return fmt.Errorf("rcpt %s: %w", to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(message(s.cfg.From, s.cfg.To, subject, body)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func message(from string, to []string, subject, body string) []byte {
	id := make([]byte, 12)
	_, _ = rand.Read(id)
	host := from[strings.LastIndexByte(from, '@')+1:]
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\r\n", from)
	fmt.Fprintf(&b, "To: %s\r\n", strings.Join(to, ", "))
	fmt.Fprintf(&b, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", subject))
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", hex.EncodeToString(id), host)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	b.WriteString(strings.ReplaceAll(strings.ReplaceAll(body, "\r\n", "\n"), "\n", "\r\n"))
	return []byte(b.String())
}
