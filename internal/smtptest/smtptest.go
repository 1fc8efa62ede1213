// Package smtptest runs a real SMTP server (emersion/go-smtp) on loopback
// for tests, with optional STARTTLS and authentication, and hands over
// every message it accepts.
package smtptest

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/argus-remote/argus/internal/testcert"
)

// Message is one accepted mail.
type Message struct {
	From string
	To   []string
	Data string
}

// Server is a running SMTP server.
type Server struct {
	Host, Port string
	// CAFile is the PEM of the certificate it presents (when TLS is on).
	CAFile   string
	Messages chan Message
}

// Options configure Start.
type Options struct {
	TLS      bool
	Username string
	Password string
}

// Start runs a server until the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	s := &Server{Host: host, Port: port, Messages: make(chan Message, 16)}
	srv := smtp.NewServer(backend{s: s, o: o})
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = !o.TLS
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	if o.TLS {
		certFile, keyFile := testcert.Files(t)
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		s.CAFile = certFile
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

type backend struct {
	s *Server
	o Options
}

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{b: b, tls: func() bool { _, ok := c.TLSConnectionState(); return ok }}, nil
}

type session struct {
	b      backend
	tls    func() bool
	authed bool
	msg    Message
}

var errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}

func (s *session) AuthMechanisms() []string {
	if s.b.o.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != s.b.o.Username || password != s.b.o.Password {
			return errors.New("invalid credentials")
		}
		s.authed = true
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if s.b.o.TLS && !s.tls() {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "STARTTLS first"}
	}
	if s.b.o.Username != "" && !s.authed {
		return errAuthRequired
	}
	s.msg = Message{From: from}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.To = append(s.msg.To, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.Data = string(b)
	s.b.s.Messages <- s.msg
	return nil
}

func (s *session) Reset()        { s.msg = Message{} }
func (s *session) Logout() error { return nil }
