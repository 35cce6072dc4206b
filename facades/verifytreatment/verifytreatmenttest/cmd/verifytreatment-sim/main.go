// Command verifytreatment-sim runs the VerifyTreatment simulator (package
// verifytreatmenttest) on its own, for developing without credentials:
//
//	go run ./facades/verifytreatment/verifytreatmenttest/cmd/verifytreatment-sim -addr 127.0.0.1:9102 \
//	    -script 'M-DOB=error:invalid_dob' -script 'M-OFF=coverage:inactive'
//
// Payers vtx_aetna and vtx_cigna exist, with their required fields. It
// serves until interrupted.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/p2pserver/p2pserver/facades/verifytreatment/verifytreatmenttest"
)

type scripts []string

func (s *scripts) String() string     { return strings.Join(*s, " ") }
func (s *scripts) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	addr := flag.String("addr", "127.0.0.1:9102", "listen address (loopback)")
	clientID := flag.String("client-id", "sim-client", "client_id to accept")
	clientSecret := flag.String("client-secret", "sim-secret", "client_secret to accept")
	var sc scripts
	flag.Var(&sc, "script", "memberId=coverage:active|coverage:inactive|coverage:unavailable|error:<code> (repeatable); codes: patient_not_found, invalid_member_id, invalid_dob, invalid_name, provider_not_on_file, payer_unavailable")
	flag.Parse()
	sim, err := verifytreatmenttest.New(verifytreatmenttest.Options{Addr: *addr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "verifytreatment-sim:", err)
		os.Exit(1)
	}
	defer sim.Close()
	sim.AddClient(*clientID, *clientSecret)
	for _, s := range sc {
		member, rest, ok := strings.Cut(s, "=")
		kind, val, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || (kind != "coverage" && kind != "error") {
			fmt.Fprintf(os.Stderr, "verifytreatment-sim: -script %q: want memberId=coverage:<c> or memberId=error:<code>\n", s)
			os.Exit(2)
		}
		if kind == "coverage" {
			sim.Script(member, verifytreatmenttest.Script{Coverage: val})
		} else {
			sim.Script(member, verifytreatmenttest.Script{Error: val})
		}
	}
	fmt.Printf("VerifyTreatment simulator at %s\n  clientId %s  clientSecret %s\n  payers: vtx_aetna, vtx_cigna\n", sim.URL, *clientID, *clientSecret)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}
