package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/boltdb"
)

// DB is an open database the store keeps its data in (see OpenDB).
type DB = backend.DB

// DBOptions qualify OpenDB.
type DBOptions struct {
	// BoltMmapSize is the address space reserved for a bbolt file (see
	// boltdb.Options.InitialMmapSize); zero for bbolt's default.
	BoltMmapSize int
}

// scheme matches the scheme of a URL ("name://"), which a file path
// does not start with.
var scheme = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// OpenDB opens the database dsn names: the path of a bbolt file (created
// with its folder when missing). Any other scheme:// is refused: it is
// not a file name, and taking it for one would create a folder named
// after the scheme.
func OpenDB(ctx context.Context, dsn string, opts DBOptions) (DB, error) {
	if m := scheme.FindStringSubmatch(dsn); m != nil {
		return nil, fmt.Errorf("database %s://…: no such kind of database; give the path of a bbolt file", strings.ToLower(m[1]))
	}
	if dir := filepath.Dir(dsn); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create database folder: %w", err)
		}
	}
	return boltdb.Open(dsn, boltdb.Options{InitialMmapSize: opts.BoltMmapSize})
}
