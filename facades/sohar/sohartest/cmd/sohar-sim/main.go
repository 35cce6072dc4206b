// Command sohar-sim runs the Sohar simulator (package sohartest) on its own,
// for developing against Sohar's API without credentials:
//
//	go run ./facades/sohar/sohartest/cmd/sohar-sim -addr 127.0.0.1:9101 \
//	    -webhook-url http://127.0.0.1:8080/api/webhooks/sohar \
//	    -script 'M-DOB=error.member.dob' -script 'M-PEND=complete.eligible,pending'
//
// It prints the client credentials and the webhook secret to put in the
// eligibility configuration, and serves until interrupted.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
)

type scripts []string

func (s *scripts) String() string     { return strings.Join(*s, " ") }
func (s *scripts) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	addr := flag.String("addr", "127.0.0.1:9101", "listen address (loopback)")
	clientID := flag.String("client-id", "sim-client", "client_id to accept at /oauth/token")
	clientSecret := flag.String("client-secret", "sim-secret", "client_secret to accept")
	webhook := flag.String("webhook-url", "", "where to deliver verification webhooks (e.g. http://127.0.0.1:8080/api/webhooks/sohar)")
	sandbox := flag.Bool("sandbox", false, "send sandbox.verification.* events")
	var sc scripts
	flag.Var(&sc, "script", "memberId=status[:reason][,pending] (repeatable); statuses: complete.eligible, complete.ineligible, error.member.id, error.member.name, error.member.dob, error.payer, error.payer.npi")
	flag.Parse()

	sim, err := sohartest.New(sohartest.Options{Addr: *addr, Sandbox: *sandbox})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sohar-sim:", err)
		os.Exit(1)
	}
	defer sim.Close()
	sim.AddClient(*clientID, *clientSecret)
	if *webhook != "" {
		sim.SetWebhook(*webhook)
	}
	for _, s := range sc {
		member, rest, ok := strings.Cut(s, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "sohar-sim: -script %q: want memberId=status[:reason][,pending]\n", s)
			os.Exit(2)
		}
		status, flags, _ := strings.Cut(rest, ",")
		status, reason, _ := strings.Cut(status, ":")
		sim.Script(member, sohartest.Script{Status: status, Reason: reason, Pending: flags == "pending", ResolveAfter: 2})
	}
	fmt.Printf("Sohar simulator at %s\n  clientId %s  clientSecret %s\n  webhookSecret %s\n", sim.URL, *clientID, *clientSecret, sim.WebhookSecret())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}
