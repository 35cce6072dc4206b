// Command p2p-mailsink is an SMTP server for trying p2pserver's emails on
// one machine: it accepts every message sent to it on loopback, prints it
// (sender, recipients, subject, plain text) and delivers nothing.
//
//	p2p-mailsink -addr 127.0.0.1:2525
//	p2pserver -smtp-url smtp://127.0.0.1:2525 -mail-from 'Payer B <p2p@payer-b.example>' ...
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/p2pserver/p2pserver/internal/smtpsink"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := smtpsink.Command(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "p2p-mailsink:", err)
		var usage *smtpsink.UsageError
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
