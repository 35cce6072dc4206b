package store

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/boltdb"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
)

// DB is an open database the store keeps its data in (see OpenDB).
type DB = backend.DB

// DBOptions qualify OpenDB.
type DBOptions struct {
	// BoltMmapSize is the address space reserved for a bbolt file (see
	// boltdb.Options.InitialMmapSize); zero for bbolt's default.
	BoltMmapSize int
	// Logger, when set, is told of a PostgreSQL schema created or
	// brought to a newer version (see pgdb.Options).
	Logger *slog.Logger
	// KeepSchema opens a PostgreSQL database as it is: its schema is
	// neither created nor migrated, and one not at the current version
	// is refused (see pgdb.Options). A bbolt file is opened as always.
	KeepSchema bool
}

// scheme matches the scheme of a URL ("name://"), which a file path
// does not start with.
var scheme = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// pgMistyped matches a PostgreSQL URL missing its "//" ("postgres:/host",
// "postgresql:host"), which is no file name anyone means.
var pgMistyped = regexp.MustCompile(`(?i)^postgres(ql)?:($|[^/]|/[^/])`)

// pgKeywords matches a PostgreSQL keyword/value connection string
// ("host=db user=p2p password=..."), which p2pserver does not take: as a
// file name it would make a bbolt file of that name, and the string,
// password and all, would be logged as the database.
var pgKeywords = regexp.MustCompile(`(?i)(^|\s)(host|hostaddr|port|dbname|user|password|passfile|sslmode|service)\s*=`)

// IsPostgres reports whether dsn names a PostgreSQL database.
func IsPostgres(dsn string) bool {
	m := scheme.FindStringSubmatch(dsn)
	return m != nil && (strings.EqualFold(m[1], "postgres") || strings.EqualFold(m[1], "postgresql"))
}

// CheckDSN reports what is wrong with dsn as a database name, without
// connecting: a scheme:// other than postgres:// or postgresql://, which
// is not a file name either (taking it for one would create a folder named
// after it); a postgres: URL missing its "//"; a PostgreSQL keyword=value
// connection string (taken for a file name, it was logged, password and
// all); or a PostgreSQL URL pgx cannot use (see pgdb.Check). The error
// never repeats a password.
func CheckDSN(dsn string) error {
	if pgMistyped.MatchString(dsn) {
		return fmt.Errorf("%s… is not a PostgreSQL URL: write postgres:// with two slashes, like postgres://user@host/db", strings.ToLower(strings.SplitN(dsn, ":", 2)[0])+":")
	}
	if pgKeywords.MatchString(dsn) {
		return fmt.Errorf("a keyword=value connection string is not taken (nor logged): give the database as a postgres:// URL, like postgres://user@host/db?sslmode=require, or the path of a bbolt file")
	}
	if m := scheme.FindStringSubmatch(dsn); m != nil && !IsPostgres(dsn) {
		return fmt.Errorf("%s://… is no kind of database p2pserver knows: give a postgres:// (or postgresql://) URL, or the path of a bbolt file", strings.ToLower(m[1]))
	}
	if IsPostgres(dsn) {
		return pgdb.Check(dsn)
	}
	return nil
}

// RedactDSN returns dsn with a URL's password hidden, for logs.
func RedactDSN(dsn string) string {
	if IsPostgres(dsn) {
		return pgdb.Redact(dsn)
	}
	return dsn
}

// OpenDB opens the database dsn names: a postgres:// or postgresql://
// URL (see package pgdb; the schema is created or migrated), else the
// path of a bbolt file (created with its folder when missing). Any other
// scheme:// is refused (see CheckDSN).
func OpenDB(ctx context.Context, dsn string, opts DBOptions) (DB, error) {
	if err := CheckDSN(dsn); err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	if IsPostgres(dsn) {
		return pgdb.OpenWith(ctx, dsn, pgdb.Options{Logger: opts.Logger, KeepSchema: opts.KeepSchema})
	}
	if dir := filepath.Dir(dsn); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create database folder: %w", err)
		}
	}
	return boltdb.Open(dsn, boltdb.Options{InitialMmapSize: opts.BoltMmapSize})
}
