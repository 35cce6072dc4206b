package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// runMigrate is `p2pserver migrate -from <bbolt file> -to <postgres URL>`:
// it copies a database whole (see store.Copy), resumably, and prints the
// count of keys per bucket in both databases. Stop the p2pserver using
// the bbolt file first (its lock keeps the copy from starting otherwise).
func runMigrate(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("p2pserver migrate", flag.ContinueOnError)
	fs.SetOutput(out)
	from := fs.String("from", "", "the bbolt database file to copy (the -db of the server it served; stop that server first)")
	to := fs.String("to", "", "the database to copy into: a postgres:// URL (its schema is created), empty or holding an unfinished copy")
	quiet := fs.Bool("quiet", false, "print only the verification, not each chunk copied")
	if err := fs.Parse(args); err != nil {
		return err
	}
	*from, *to = strings.TrimSpace(*from), strings.TrimSpace(*to)
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected argument %q: migrate takes -from and -to", fs.Arg(0))
	case *from == "" || *to == "":
		return errors.New("-from (a bbolt file) and -to (a postgres:// URL) are both required")
	case store.IsPostgres(*from):
		return errors.New("-from: give the bbolt file to copy; copying out of PostgreSQL is done with PostgreSQL's own tools (pg_dump)")
	}
	if err := store.CheckDSN(*to); err != nil {
		return fmt.Errorf("-to: %w", err)
	}
	if fi, err := os.Stat(*from); err != nil || fi.IsDir() {
		return fmt.Errorf("-from: %s is not a database file", *from)
	}
	src, err := store.OpenDB(ctx, *from, store.DBOptions{})
	if err != nil {
		return fmt.Errorf("-from: %w", err)
	}
	defer src.Close()
	dst, err := store.OpenDB(ctx, *to, store.DBOptions{})
	if err != nil {
		return fmt.Errorf("-to: %w", err)
	}
	defer dst.Close()
	fmt.Fprintf(out, "copying %s to %s\n", *from, store.RedactDSN(*to))
	progress := func(bucket string, n int) {
		if !*quiet {
			fmt.Fprintf(out, "  %s: %d keys\n", bucket, n)
		}
	}
	counts, err := store.Copy(ctx, src, dst, progress)
	if len(counts) > 0 {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "bucket\tkeys in -from\tkeys in -to\tsequence\t")
		total := 0
		for _, c := range counts {
			mark := ""
			if !c.OK() {
				mark = " DIFFERS"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", c.Bucket, c.From, c.To, c.ToSeq, mark)
			total += c.To
		}
		fmt.Fprintf(tw, "all %d buckets\t\t%d\t\t\n", len(counts), total)
		tw.Flush()
	}
	if err != nil {
		return fmt.Errorf("%w (run the same command again to go on from where it stopped)", err)
	}
	fmt.Fprintln(out, "the copy is complete and verified: start p2pserver with -db", store.RedactDSN(*to))
	return nil
}
