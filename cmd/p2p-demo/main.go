// Command p2p-demo runs the payer-to-payer exchange end to end on this
// machine and prints each step as the HTTP call a payer's engineer would
// make (see package internal/demo). `make demo` builds the binaries and
// runs it from the repository's top folder:
//
//	p2p-demo [-bin bin] [-synthea testdata/synthea] [-work DIR] [-keep] [-timeout 5m]
//
// It starts p2pserver twice (the old and the new payer) and p2p-devidp
// from -bin (default: the folder p2p-demo itself is in), on free ports of
// 127.0.0.1, with their databases and logs in a temporary folder that is
// removed at the end unless -keep or -work is given. The last line says
// whether the exchange succeeded; the exit status is 0 if it did, 1 if
// not, 2 for bad arguments. Every child process is stopped on exit,
// including on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/p2pserver/p2pserver/internal/demo"
)

func main() {
	os.Exit(run())
}

func run() int {
	self, _ := os.Executable()
	fs := flag.NewFlagSet("p2p-demo", flag.ContinueOnError)
	bin := fs.String("bin", filepath.Dir(self), "folder holding the p2pserver and p2p-devidp binaries")
	synthea := fs.String("synthea", filepath.Join("testdata", "synthea"), "folder of the Synthea patient bundles")
	work := fs.String("work", "", "folder for the databases and logs (default: a temporary folder, removed at the end)")
	keep := fs.Bool("keep", false, "keep the temporary folder (databases and logs) at the end")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "p2p-demo: unexpected arguments %q (flags only)\n", fs.Args())
		return 2
	}
	for _, prog := range []string{"p2pserver", "p2p-devidp"} {
		if _, err := os.Stat(filepath.Join(*bin, prog)); err != nil {
			fmt.Fprintf(os.Stderr, "p2p-demo: %s is not in %s (build it: go build -o bin/ ./cmd/...; or give -bin)\n", prog, *bin)
			return 2
		}
	}
	dir := *work
	if dir == "" {
		tmp, err := os.MkdirTemp("", "p2p-demo-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "p2p-demo:", err)
			return 1
		}
		dir = tmp
		if !*keep {
			defer os.RemoveAll(tmp)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	_, err := demo.Run(ctx, demo.Config{
		Command: func(program string, args ...string) *exec.Cmd {
			return exec.Command(filepath.Join(*bin, program), args...)
		},
		Synthea: *synthea,
		WorkDir: dir,
		Out:     os.Stdout,
	})
	if err != nil {
		if *keep || *work != "" {
			fmt.Printf("The databases and logs are in %s.\n", dir)
		}
		return 1
	}
	return 0
}
