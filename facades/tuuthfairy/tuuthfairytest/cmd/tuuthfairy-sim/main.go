// Command tuuthfairy-sim runs the tuuthfairy simulator (package
// tuuthfairytest) on its own, for developing without credentials:
//
//	go run ./facades/tuuthfairy/tuuthfairytest/cmd/tuuthfairy-sim -addr 127.0.0.1:9103 \
//	    -webhook-url http://127.0.0.1:8080/api/webhooks/tuuthfairy -public-key-out /tmp/tuuthfairy.pem
//
// The GraphQL endpoint is <url>/graphql with "Authorization: Bearer
// <api key>". Websites dnoaconnect.com, metdental.com,
// dentalofficetoolkit.com and deltadentalins.com (2FA, code 123456) exist.
// It serves until interrupted.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/p2pserver/p2pserver/facades/tuuthfairy/tuuthfairytest"
)

type scripts []string

func (s *scripts) String() string     { return strings.Join(*s, " ") }
func (s *scripts) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	addr := flag.String("addr", "127.0.0.1:9103", "listen address (loopback)")
	apiKey := flag.String("api-key", "sim-api-key", "API key to accept")
	webhook := flag.String("webhook-url", "", "where to deliver webhooks (e.g. http://127.0.0.1:8080/api/webhooks/tuuthfairy)")
	keyOut := flag.String("public-key-out", "", "write the webhook signing public key (PEM) to this file")
	code := flag.String("2fa-code", "123456", "the code portals with 2FA expect")
	var sc scripts
	flag.Var(&sc, "script", "memberId=inactive or memberId=<failureReason> (repeatable): patient_not_found, invalid_member_id, invalid_dob, invalid_name, invalid_npi, payer_unavailable")
	flag.Parse()
	sim, err := tuuthfairytest.New(tuuthfairytest.Options{Addr: *addr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "tuuthfairy-sim:", err)
		os.Exit(1)
	}
	defer sim.Close()
	sim.AddAPIKey(*apiKey)
	sim.Set2FACode(*code)
	if *webhook != "" {
		sim.SetWebhook(*webhook)
	}
	for _, s := range sc {
		member, what, ok := strings.Cut(s, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "tuuthfairy-sim: -script %q: want memberId=inactive|<failureReason>\n", s)
			os.Exit(2)
		}
		if what == "inactive" {
			sim.Script(member, tuuthfairytest.Script{Inactive: true})
		} else {
			sim.Script(member, tuuthfairytest.Script{Failure: what})
		}
	}
	if *keyOut != "" {
		if err := os.WriteFile(*keyOut, []byte(sim.PublicKeyPEM()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "tuuthfairy-sim:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("tuuthfairy simulator at %s/graphql\n  apiKey %s\n  webhook public key:\n%s", sim.URL, *apiKey, sim.PublicKeyPEM())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}
