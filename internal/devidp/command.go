package devidp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// DefaultAddr is where cmd/p2p-devidp listens unless told otherwise.
const DefaultAddr = "127.0.0.1:8090"

// UsageError is an error of Command about its arguments.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usage(format string, args ...any) error { return &UsageError{Msg: fmt.Sprintf(format, args...)} }

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// Command runs the development OpenID provider as cmd/p2p-devidp does:
// it reads the flags in args, starts the provider, writes its endpoints,
// clients and members to out, and serves until ctx ends. Errors about the
// arguments are *UsageError.
//
// Flags: -addr (loopback only, default DefaultAddr), -path, -client
// ID:SECRET:REDIRECT_URI[,REDIRECT_URI...] (repeatable; SECRET empty for a
// public client; default payer-b:payer-b-secret:<issuer>/code), -member
// USERNAME:PASSWORD:PATIENT_ID[:NAME] (repeatable, at least one),
// -access-token-lifetime (default 1h).
func Command(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("p2p-devidp", flag.ContinueOnError)
	fs.SetOutput(out)
	var clients, members listFlag
	addr := fs.String("addr", DefaultAddr, "listen address; loopback only (127.0.0.1, ::1, localhost)")
	path := fs.String("path", "", "serve under this path: the issuer becomes http://<addr>/<path>")
	ttl := fs.Duration("access-token-lifetime", time.Hour, "how long access tokens are valid")
	fs.Var(&clients, "client", "a client (a payer's portal): ID:SECRET:REDIRECT_URI[,REDIRECT_URI...]; SECRET empty for a public client (repeatable; default payer-b:payer-b-secret:<issuer>/code)")
	fs.Var(&members, "member", "a member account: USERNAME:PASSWORD:PATIENT_ID[:NAME], PATIENT_ID the member's Patient id at the FHIR server trusting this provider (repeatable, at least one)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usage("%v", err)
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments %q (flags only)", fs.Args())
	}
	if *ttl <= 0 {
		return usage("-access-token-lifetime must be positive")
	}
	var ms []Member
	for _, m := range members {
		parts := strings.SplitN(m, ":", 4)
		if len(parts) < 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
			return usage("-member %q: want USERNAME:PASSWORD:PATIENT_ID[:NAME]", m)
		}
		mem := Member{Username: parts[0], Password: parts[1], Patient: parts[2]}
		if len(parts) == 4 {
			mem.Name = parts[3]
		}
		ms = append(ms, mem)
	}
	if len(ms) == 0 {
		return usage("no member account: give at least one -member USERNAME:PASSWORD:PATIENT_ID")
	}
	var cs []Client
	for _, c := range clients {
		parts := strings.SplitN(c, ":", 3)
		if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
			return usage("-client %q: want ID:SECRET:REDIRECT_URI[,REDIRECT_URI...]", c)
		}
		c := Client{ID: parts[0], Secret: parts[1], RedirectURIs: strings.Split(parts[2], ",")}
		if err := c.check(); err != nil {
			return usage("-client %q: %v", c.ID, err)
		}
		cs = append(cs, c)
	}
	if err := checkLoopback(*addr); err != nil {
		return usage("-addr: %v", err)
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := Start(Options{Addr: *addr, Path: *path, AccessTokenLifetime: *ttl, Logger: log})
	if err != nil {
		return err
	}
	defer p.Close()
	if len(cs) == 0 {
		cs = []Client{{ID: "payer-b", Secret: "payer-b-secret", RedirectURIs: []string{p.CodePageURL()}}}
	}
	for _, c := range cs {
		if err := p.AddClient(c); err != nil {
			return usage("%v", err)
		}
	}
	for _, m := range ms {
		if err := p.AddMember(m); err != nil {
			return usage("%v", err)
		}
	}

	fmt.Fprintf(out, "p2p-devidp: development OpenID provider, issuer %s\n", p.Issuer())
	fmt.Fprintf(out, "  signing key generated for this run: tokens stop verifying when it stops\n")
	fmt.Fprintf(out, "  discovery      %s\n", p.WellKnownURL())
	fmt.Fprintf(out, "  authorization  %s (login page %s/login)\n", p.AuthorizationEndpoint(), p.Issuer())
	fmt.Fprintf(out, "  token          %s\n", p.TokenEndpoint())
	for _, c := range cs {
		kind := "confidential, client_secret_basic or _post"
		if c.Secret == "" {
			kind = "public, PKCE only"
		}
		fmt.Fprintf(out, "  client %s (%s), redirect URIs %s\n", c.ID, kind, strings.Join(c.RedirectURIs, " "))
	}
	for _, m := range ms {
		fmt.Fprintf(out, "  member %s, patient %s\n", m.Username, m.Patient)
	}
	<-ctx.Done()
	return nil
}
