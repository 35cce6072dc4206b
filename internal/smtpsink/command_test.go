package smtpsink

import (
	"context"
	"errors"
	"net/smtp"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

type safeBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, out *safeBuffer, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), what) {
		if time.Now().After(deadline) {
			t.Fatalf("%q never printed; output: %s", what, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCommandPrintsEachMessage: the sink prints what a recipient would
// read of each message, in order, and refuses to listen beyond loopback.
func TestCommandPrintsEachMessage(t *testing.T) {
	for _, args := range [][]string{{"-addr", "0.0.0.0:2525"}, {"-addr", ":0"}, {"stray"}, {"-nope"}} {
		var ue *UsageError
		if err := Command(context.Background(), args, &safeBuffer{}); !errors.As(err, &ue) {
			t.Errorf("Command(%q) = %v, want a usage error", args, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out safeBuffer
	done := make(chan error, 1)
	go func() { done <- Command(ctx, []string{"-addr", "127.0.0.1:0"}, &out) }()
	waitFor(t, &out, "SMTP server at")
	addr := regexp.MustCompile(`smtp://(127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String())
	if addr == nil {
		t.Fatalf("no address in %q", out.String())
	}
	for i, subject := range []string{"First", "Second"} {
		msg := "From: p2p@payer-b.example\r\nTo: angelic@example.org\r\nSubject: " + subject + "\r\n\r\nHello number " + string(rune('1'+i)) + ".\r\n"
		if err := smtp.SendMail(addr[1], nil, "p2p@payer-b.example", []string{"angelic@example.org"}, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, &out, "--- message 2: from p2p@payer-b.example to angelic@example.org\nSubject: Second\n\nHello number 2.")
	if !strings.Contains(out.String(), "Subject: First\n\nHello number 1.") {
		t.Errorf("first message missing: %s", out.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("after its context ended: %v", err)
	}
}
