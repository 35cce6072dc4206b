package smtpsink

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
)

// DefaultAddr is where cmd/p2p-mailsink listens unless told otherwise.
const DefaultAddr = "127.0.0.1:2525"

// UsageError is an error of Command about its arguments.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Command runs the sink as cmd/p2p-mailsink does: it reads the flags in
// args (-addr, loopback only, default DefaultAddr), listens, and writes
// every message it receives to out (envelope, subject and plain text)
// until ctx ends.
func Command(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("p2p-mailsink", flag.ContinueOnError)
	fs.SetOutput(out)
	addr := fs.String("addr", DefaultAddr, "listen address; loopback only (127.0.0.1, ::1, localhost)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &UsageError{Msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return &UsageError{Msg: fmt.Sprintf("unexpected arguments %q (flags only)", fs.Args())}
	}
	host, _, err := net.SplitHostPort(*addr)
	if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
		return &UsageError{Msg: fmt.Sprintf("-addr %q is not a loopback address (127.0.0.1:2525, [::1]:2525, localhost:2525)", *addr)}
	}
	s, err := Start(Options{Addr: *addr})
	if err != nil {
		return err
	}
	defer s.Stop()
	fmt.Fprintf(out, "p2p-mailsink: SMTP server at %s; it shows every message here and delivers none.\n", s.URL())
	fmt.Fprintf(out, "  give p2pserver -smtp-url %s -mail-from 'Payer B <p2p@payer-b.example>'\n", s.URL())
	for n := 1; ; n++ {
		msgs, err := s.Wait(ctx, n)
		if err != nil {
			return nil // ctx ended
		}
		m := msgs[n-1]
		fmt.Fprintf(out, "\n--- message %d: from %s to %s\nSubject: %s\n\n%s\n", n, m.From, strings.Join(m.To, ", "), m.Subject, strings.TrimSpace(m.Text))
	}
}
