// Command p2p-devidp is a development OpenID provider for trying
// p2pserver's payer-to-payer exchange on one machine: members of the old
// payer log in on its login page (authorization-code flow with PKCE) and
// the new payer's portal gets their tokens, JWTs whose patient claim a
// p2pserver started with -trusted-issuers honours.
//
//	p2p-devidp -addr 127.0.0.1:8090 \
//	    -client 'payer-b:payer-b-secret:http://127.0.0.1:8090/code' \
//	    -member 'angelic:angelic-pw:<Patient id at the old payer>:Angelic Mueller'
//
// It listens on loopback only, keeps everything in memory and makes a new
// signing key at every start. The flags are described by -h and in the
// README ("Your first exchange").
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/p2pserver/p2pserver/internal/devidp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := devidp.Command(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "p2p-devidp:", err)
		var usage *devidp.UsageError
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
