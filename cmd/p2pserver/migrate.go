package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// runMigrate is `p2pserver migrate -from <database> -to <database>`: it
// copies a database whole (see store.Copy), resumably, and prints the
// count of keys per bucket in both databases. Each side is a bbolt file or
// a postgres:// URL, so that it serves every direction: bbolt to
// PostgreSQL (scaling out), PostgreSQL back to bbolt (the way back),
// bbolt to bbolt (a compact copy of a file grown large) and PostgreSQL to
// PostgreSQL. Every p2pserver on -from must be stopped first: a bbolt
// file's lock keeps the copy from starting otherwise, a PostgreSQL
// database has no such lock.
func runMigrate(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("p2pserver migrate", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage:\n  p2pserver migrate -from <database> -to <database> [-quiet]\n\ncopies a database whole into an empty one (stop every p2pserver on -from first); each a bbolt file or a postgres:// URL.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	from := fs.String("from", "", "the database to copy: a bbolt file or a postgres:// URL (the -db of the servers it served; stop them first)")
	to := fs.String("to", "", "the database to copy into: a bbolt file (created) or a postgres:// URL (its schema is created), empty or holding an unfinished copy")
	quiet := fs.Bool("quiet", false, "print only the verification, not each chunk copied")
	if err := fs.Parse(args); err != nil {
		return err
	}
	*from, *to = strings.TrimSpace(*from), strings.TrimSpace(*to)
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected argument %q: migrate takes -from and -to", fs.Arg(0))
	case *from == "" || *to == "":
		return errors.New("-from and -to are both required: each a bbolt file or a postgres:// URL")
	}
	if err := store.CheckDSN(*from); err != nil {
		return fmt.Errorf("-from: %w", err)
	}
	if err := store.CheckDSN(*to); err != nil {
		return fmt.Errorf("-to: %w", err)
	}
	if sameDatabase(*from, *to) {
		return errors.New("-from and -to name the same database: copy into another one")
	}
	if !store.IsPostgres(*from) {
		if fi, err := os.Stat(*from); err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
			return fmt.Errorf("-from: %s is not a database file", *from)
		}
	}
	// The source is read as it is: a PostgreSQL schema of an earlier
	// version is not upgraded (which would leave the database unreadable
	// by the version that wrote it, the copy's usual purpose).
	src, err := store.OpenDB(ctx, *from, store.DBOptions{KeepSchema: true})
	if err != nil {
		return fmt.Errorf("-from: %w", err)
	}
	defer src.Close()
	buckets := 0
	if err := src.View(ctx, func(tx backend.Tx) error {
		return tx.ForEach(func([]byte, backend.Bucket) error { buckets++; return nil })
	}); err != nil {
		return fmt.Errorf("-from: %w", err)
	}
	if buckets == 0 {
		return fmt.Errorf("-from: %s holds no p2pserver database", store.RedactDSN(*from))
	}
	dst, err := store.OpenDB(ctx, *to, store.DBOptions{})
	if err != nil {
		return fmt.Errorf("-to: %w", err)
	}
	defer dst.Close()
	fmt.Fprintf(out, "copying %s to %s\n", store.RedactDSN(*from), store.RedactDSN(*to))
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
	switch {
	case errors.Is(err, store.ErrTargetNotEmpty), errors.Is(err, store.ErrOtherSource):
		// Refused before anything was copied: running it again changes
		// nothing.
		return fmt.Errorf("-to: %w", errors.Unwrap(err))
	case err != nil:
		return fmt.Errorf("%w (run the same command again to go on from where it stopped)", err)
	}
	fmt.Fprintln(out, "the copy is complete and verified: start p2pserver with -db", store.RedactDSN(*to))
	return nil
}

// sameDatabase reports whether a and b name one database: the same bbolt
// file, or the same PostgreSQL host, port and database.
func sameDatabase(a, b string) bool {
	if store.IsPostgres(a) != store.IsPostgres(b) {
		return false
	}
	if store.IsPostgres(a) {
		ua, errA := url.Parse(a)
		ub, errB := url.Parse(b)
		return errA == nil && errB == nil && strings.EqualFold(ua.Host, ub.Host) && ua.Path == ub.Path
	}
	pa, errA := filepath.Abs(a)
	pb, errB := filepath.Abs(b)
	if errA != nil || errB != nil {
		return false
	}
	if fa, err := os.Stat(pa); err == nil {
		if fb, err := os.Stat(pb); err == nil {
			return os.SameFile(fa, fb)
		}
	}
	return pa == pb
}
