// Command healthie-sim runs the Healthie simulator as a standalone server,
// for developing the Healthie facade without Healthie credentials:
//
//	go run ./facades/healthie/healthietest/cmd/healthie-sim -addr 127.0.0.1:9200
//
// It serves POST /graphql with the API key given by -api-key, seeded with
// -patients demo patients (and their appointments, policies and claims).
// With -webhook-url and -webhook-secret, its mutations send signed webhooks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/p2pserver/p2pserver/facades/healthie/healthietest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9200", "listen address (host:port)")
	key := flag.String("api-key", "sim-api-key", "API key clients must send as Authorization: Basic <key>")
	patients := flag.Int("patients", 25, "demo patients to seed")
	rate := flag.Int("rate", 250, "requests per second per API key before 429")
	hookURL := flag.String("webhook-url", "", "URL to send signed webhooks to (e.g. http://127.0.0.1:8080/api/webhooks/healthie)")
	hookSecret := flag.String("webhook-secret", "", "webhook signing secret")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, healthietest.Options{APIKey: *key, RatePerSecond: *rate, WebhookURL: *hookURL, WebhookSecret: *hookSecret}, *patients, log); err != nil {
		log.Error("healthie-sim stopped", "err", err)
		os.Exit(1)
	}
}

func run(addr string, opts healthietest.Options, patients int, log *slog.Logger) error {
	sim := healthietest.New(opts)
	defer sim.Close()
	sim.Seed(patients)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("healthie simulator listening", "graphql", "http://"+ln.Addr().String()+"/graphql", "api_key", opts.APIKey, "state", sim.String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
