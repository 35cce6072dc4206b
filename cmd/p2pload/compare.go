package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// setup is one way of running p2pserver that -compare measures.
type setup struct {
	name      string
	postgres  bool
	processes int
}

// compareSetups are -compare's setups, bbolt first: the others are
// compared with it.
var compareSetups = []setup{
	{"bbolt", false, 1},
	{"PostgreSQL, 1 process", true, 1},
	{"PostgreSQL, 2 processes", true, 2},
}

// runCompare runs the load run on each of compareSetups in turn, each on
// a new database (the PostgreSQL ones on one private, durable PostgreSQL
// server started for the run), then prints the figures of each size side
// by side.
func runCompare(server string, sizes []int, c int, d, timeLimit time.Duration) error {
	pg, err := pgtest.StartDurable()
	if err != nil {
		return err
	}
	defer pg.Stop()
	fmt.Println("p2pload: PostgreSQL runs as a private server started for the run (fsync, full_page_writes and synchronous_commit on)")
	all := make([][]*sizeResult, len(compareSetups))
	for i, s := range compareSetups {
		fmt.Printf("\n==== %s\n", s.name)
		serverDB = ""
		if s.postgres {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			serverDB, err = pg.NewDatabase(ctx)
			cancel()
			if err != nil {
				return err
			}
		}
		if all[i], err = run("", server, sizes, c, d, timeLimit, false, s.processes); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	serverDB = ""
	for k := range sizes {
		printCompare(compareSetups, all, k)
	}
	return nil
}

// printCompare prints the figures of the k-th size of each setup side by
// side, each but the first's with how many times the first's it is, the
// worse way round: a rate (or the reads' share of the HTTP floor) the
// first's divided by it, a latency or a size it divided by the first's.
// 1.00x is the same figure; below 1, better than the first.
func printCompare(setups []setup, all [][]*sizeResult, k int) {
	first := all[0]
	if k >= len(first) {
		return
	}
	base := first[k]
	fmt.Printf("\n%d resources: each figure, then for the others how many times bbolt's it is, the worse way round (rates: bbolt's / its; latencies and sizes: its / bbolt's)\n", base.resources)
	fmt.Printf("%-34s", "figure")
	for _, s := range setups {
		fmt.Printf(" %24s", s.name)
	}
	fmt.Println()
	for _, f := range base.figs {
		fmt.Printf("%-34s %24s", f.name, formatFigure(f))
		for _, res := range all[1:] {
			cell := "-"
			if k < len(res) {
				if g, ok := res[k].fig(f.name); ok {
					cell = formatFigure(g)
					if w := worse(f, g); w > 0 {
						cell += fmt.Sprintf(" (%.2fx)", w)
					}
				}
			}
			fmt.Printf(" %24s", cell)
		}
		fmt.Println()
	}
	if short := shortSetups(setups, all, k); short != "" {
		fmt.Printf("(loading stopped short of %d resources on: %s)\n", base.resources, short)
	}
}

// fig returns the figure named name.
func (r *sizeResult) fig(name string) (figure, bool) {
	for _, f := range r.figs {
		if f.name == name {
			return f, true
		}
	}
	return figure{}, false
}

// worse is how many times base's figure g is, the worse way round (see
// printCompare); 0 when either is 0.
func worse(base, g figure) float64 {
	if base.v == 0 || g.v == 0 {
		return 0
	}
	if base.lower {
		return g.v / base.v
	}
	return base.v / g.v
}

func shortSetups(setups []setup, all [][]*sizeResult, k int) string {
	var names []string
	for i, res := range all {
		if k < len(res) && res[k].short {
			names = append(names, setups[i].name)
		}
	}
	return strings.Join(names, ", ")
}
