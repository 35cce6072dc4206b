// Package smtptest runs a real SMTP server (internal/smtpsink, built on
// github.com/emersion/go-smtp) on 127.0.0.1 inside a test, keeps the
// messages it receives and decodes them (headers, plain-text and HTML
// parts), so tests check what a recipient would read. The server can be
// stopped and started again on the same address, to test what a sender
// does while the mail server is down.
package smtptest

import (
	"context"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/internal/smtpsink"
)

// Options configure a Server (see smtpsink.Options; Addr is ignored: the
// server takes a free port).
type Options = smtpsink.Options

// Message is one message the server accepted.
type Message = smtpsink.Message

// Server is an SMTP server on 127.0.0.1.
type Server struct {
	*smtpsink.Server
	t testing.TB
}

// New starts a Server on a free port of 127.0.0.1; it is closed when the
// test ends.
func New(t testing.TB, opts Options) *Server {
	t.Helper()
	opts.Addr = "127.0.0.1:0"
	s, err := smtpsink.Start(opts)
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	t.Cleanup(s.Stop)
	return &Server{Server: s, t: t}
}

// Start listens again on the same address after Stop.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.Restart(); err != nil {
		s.t.Fatalf("smtptest: %v", err)
	}
}

// Wait waits until at least n messages have arrived, or fails the test
// after timeout, and returns them all.
func (s *Server) Wait(n int, timeout time.Duration) []Message {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	msgs, err := s.Server.Wait(ctx, n)
	if err != nil {
		s.t.Fatalf("smtptest: after %s: %v", timeout, err)
	}
	return msgs
}
