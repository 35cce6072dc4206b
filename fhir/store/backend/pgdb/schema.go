package pgdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the schema's versions, in order: migration i+1 brings
// the schema from version i to i+1. A released migration never changes;
// a change of schema is a new one at the end.
//
// Text columns are COLLATE "C" and keys bytea so that PostgreSQL orders
// them as the store does, byte by byte.
var migrations = []string{
	// 1: the store's buckets as tables (see tables.go).
	`
CREATE TABLE p2p_buckets (
	name text COLLATE "C" PRIMARY KEY,
	seq  bigint NOT NULL DEFAULT 0
);
CREATE TABLE p2p_kv (
	bucket text COLLATE "C" NOT NULL,
	key    bytea NOT NULL,
	value  bytea NOT NULL,
	PRIMARY KEY (bucket, key)
);
CREATE TABLE p2p_versions (
	type    text COLLATE "C" NOT NULL,
	id      text COLLATE "C" NOT NULL,
	version bigint NOT NULL,
	rec     bytea NOT NULL,
	PRIMARY KEY (type, id, version)
);
CREATE TABLE p2p_resources (
	type    text COLLATE "C" NOT NULL,
	id      text COLLATE "C" NOT NULL,
	version bigint NOT NULL,
	head    bytea NOT NULL,
	rec     bytea,
	PRIMARY KEY (type, id)
);
CREATE TABLE p2p_entries (
	type    text COLLATE "C" NOT NULL,
	id      text COLLATE "C" NOT NULL,
	entries bytea NOT NULL,
	PRIMARY KEY (type, id)
);
CREATE TABLE p2p_search (
	type    text COLLATE "C" NOT NULL,
	param   text COLLATE "C" NOT NULL,
	key     bytea NOT NULL,
	id      text COLLATE "C" NOT NULL,
	payload bytea NOT NULL,
	PRIMARY KEY (type, param, key, id)
);
CREATE TABLE p2p_changes (
	log   text COLLATE "C" NOT NULL,
	seq   bigint NOT NULL,
	value bytea NOT NULL,
	PRIMARY KEY (log, seq)
);
`,
	// 2: search index rows name their (type, parameter) by a number:
	// each row and its key in the primary key are a fifth smaller.
	`
CREATE TABLE p2p_search_params (
	ix    integer PRIMARY KEY,
	type  text COLLATE "C" NOT NULL,
	param text COLLATE "C" NOT NULL,
	UNIQUE (type, param)
);
INSERT INTO p2p_search_params (ix, type, param)
	SELECT row_number() OVER (ORDER BY type, param), type, param FROM (SELECT DISTINCT type, param FROM p2p_search) d;
CREATE TABLE p2p_index (
	ix      integer NOT NULL,
	key     bytea NOT NULL,
	id      text COLLATE "C" NOT NULL,
	payload bytea NOT NULL,
	PRIMARY KEY (ix, key, id)
);
INSERT INTO p2p_index (ix, key, id, payload)
	SELECT p.ix, s.key, s.id, s.payload FROM p2p_search s JOIN p2p_search_params p ON p.type = s.type AND p.param = s.param;
DROP TABLE p2p_search;
`,
	// 3: an index row's id is the id part of the store's key as it is,
	// bytea: an id the server gave, 0x01 and 16 bytes, takes 17 bytes
	// instead of 0x01 and 32 hexadecimal characters (16 bytes less in
	// the heap and in the primary key, of ~10 rows per resource). bytea
	// orders as text COLLATE "C" does, byte by byte, and 0x01 and the
	// bytes order as 0x01 and their hexadecimal did.
	`
ALTER TABLE p2p_index ALTER COLUMN id TYPE bytea USING
	CASE WHEN left(id, 1) = chr(1) THEN '\x01'::bytea || decode(substr(id, 2), 'hex')
	ELSE convert_to(id, 'UTF8') END;
`,
	// 4: a resource's index entries (X:<type>) are a column of its row
	// in p2p_resources, which p2p_entries was a table of its own for:
	// one heap tuple and one primary-key entry per resource instead of
	// two, and a candidate's record and entries read as one row. A row
	// holds the R:<type> value (head not null), the X:<type> value
	// (entries not null), or both. The table is written anew, in key
	// order, rather than updated in place (which would leave a dead
	// tuple per resource); version first, where it needs no padding.
	// A row is kept whole up to 4,080 bytes (toast_tuple_target, two
	// rows a page) rather than 2,032: a record and its entries together
	// pass 2,032 where neither did alone (a Synthea Patient: ~1,250 and
	// ~1,060), and moving the record to TOAST would cost its every read
	// a lookup in the TOAST table, and more bytes than keeping it. The
	// new table is analyzed before the migration commits: a new table
	// has no statistics, and plans made without them would stay in the
	// connections' caches (see sessionParams) until autovacuum came.
	`
CREATE TABLE p2p_resources_4 (
	version bigint,
	type    text COLLATE "C" NOT NULL,
	id      text COLLATE "C" NOT NULL,
	head    bytea,
	rec     bytea,
	entries bytea,
	CONSTRAINT p2p_resources_held CHECK (head IS NOT NULL OR entries IS NOT NULL)
) WITH (toast_tuple_target = 4080);
INSERT INTO p2p_resources_4 (version, type, id, head, rec, entries)
	SELECT r.version, coalesce(r.type, x.type), coalesce(r.id, x.id), r.head, r.rec, x.entries
	FROM p2p_resources r FULL JOIN p2p_entries x ON x.type = r.type AND x.id = r.id
	ORDER BY 2, 3;
DROP TABLE p2p_resources, p2p_entries;
ALTER TABLE p2p_resources_4 RENAME TO p2p_resources;
ALTER TABLE p2p_resources ADD CONSTRAINT p2p_resources_pkey PRIMARY KEY (type, id);
ANALYZE p2p_resources;
`,
}

// Lock keys of the advisory locks (pg_advisory_xact_lock), scoped to the
// database: one for migrating the schema, one for the store's writer,
// one for analyzing the tables (see analyzeFirst).
const (
	migrateLock int64 = 0x70327073_00000001 // "p2ps" 1
	writeLock   int64 = 0x70327073_00000002 // "p2ps" 2
	analyzeLock int64 = 0x70327073_00000003 // "p2ps" 3
)

// migrate brings the schema to the last version, in one transaction under
// an advisory lock: processes starting together wait for the first, then
// find the schema current. A database whose schema is newer than this
// program knows is refused rather than written with old rules.
// It returns the version the schema was at.
func migrate(ctx context.Context, pool *pgxpool.Pool) (from int, err error) {
	return migrateTo(ctx, pool, len(migrations))
}

// errNoSchema is schemaVersion's answer for a database p2pserver never
// made its schema in.
var errNoSchema = errors.New("holds no p2pserver database (no p2p_schema table)")

// schemaVersion returns the version of the schema, without changing
// anything: errNoSchema when the database has none; an error when it is
// not the version this program reads (older: it would have to be
// migrated first; newer: see migrateTo).
func schemaVersion(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('p2p_schema') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, errNoSchema
	}
	var have int
	if err := pool.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM p2p_schema`).Scan(&have); err != nil {
		return 0, err
	}
	switch {
	case have > len(migrations):
		return have, newerSchema(have)
	case have < len(migrations):
		return have, fmt.Errorf("the database's schema is at version %d, older than this p2pserver reads (%d), and is left as it is here: "+
			"start this p2pserver on it once to bring it to version %d, or use the p2pserver that wrote it", have, len(migrations), len(migrations))
	}
	return have, nil
}

func newerSchema(have int) error {
	return fmt.Errorf("the database's schema is at version %d, newer than this p2pserver knows (%d): run the newer p2pserver", have, len(migrations))
}

// migrateTo brings the schema to version to (at most the last), as
// migrate does, and returns the version it was at.
func migrateTo(ctx context.Context, pool *pgxpool.Pool, to int) (from int, err error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLock); err != nil {
		return 0, err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS p2p_schema (
	version    integer PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return 0, err
	}
	var have int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM p2p_schema`).Scan(&have); err != nil {
		return 0, err
	}
	if have > len(migrations) {
		return have, newerSchema(have)
	}
	for v := have + 1; v <= to; v++ {
		if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
			return have, fmt.Errorf("schema version %d: %w", v, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO p2p_schema (version) VALUES ($1)`, v); err != nil {
			return have, err
		}
	}
	return have, tx.Commit(ctx)
}
