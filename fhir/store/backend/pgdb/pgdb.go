// Package pgdb serves the store's backend contract (package backend) from
// PostgreSQL, for several p2pserver processes on one database. The
// store's buckets map onto real tables with B-tree primary keys (see
// tables.go), so that the store's seeks are index range scans.
//
// Read transactions are REPEATABLE READ READ ONLY snapshots, begun in
// the round trip of their first statement and ended in the round trip of
// the next transaction on their connection (see parkTTL): a read of one
// statement is one round trip. Cursors read rows in growing chunks, and
// no row past the end of a bounded cursor's range
// (backend.BoundedCursorer). A write transaction takes a
// transaction-scoped advisory lock first, so that write transactions are
// serialized across processes as the store expects (sequences,
// conditional creates, the change log's order), and reads the buckets'
// sequences in the same round trip; its changes are kept in memory
// (reads in the same transaction see them) and sent at commit in one
// round trip of multi-row statements. Statements are prepared and planned
// once per connection (sessionParams).
//
// Round trips (DB.RoundTrips counts them): a read of a resource 1; a
// page of a search of exact keys or of a selective range 1 (its index
// entries with the records, and where they are read the index entries,
// of the resources they name: backend.Joiner), a count of one 1; a
// commit group of creates or updates 3 whatever its size (begin, the
// group's current versions, commit), and one for each other key its
// writes read (the store's hooks).
package pgdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// DB is a PostgreSQL database serving backend.DB.
type DB struct {
	pool *pgxpool.Pool
	// parking holds connections left in finished read transactions
	// (see parkTTL).
	parking parking
	// analyzer analyzes the tables while they are young (see
	// analyzeFirst).
	analyzer analyzer

	mu     sync.Mutex
	known  map[string]bool  // bucket names recorded in p2p_buckets
	params map[string]int32 // search index bucket names' numbers, committed
	// hot are the keys of p2p_kv the last write transaction read from
	// the database (see hotKeys), read by the next one in its first
	// round trip.
	hot []kvKey

	// trips counts the round trips transactions sent (see RoundTrips).
	trips atomic.Int64
}

// RoundTrips returns how many round trips the transactions have sent to
// the database since Open: a statement, or a batch of statements sent
// together, is one. The rollback of a parked read transaction sent with
// the next statement is part of that statement's round trip; one sent
// alone when nothing follows (see parkTTL) is not counted, nor what the
// analyzer and the schema's migration send, nor pgx's preparing of a
// statement new to a connection (once per connection).
func (d *DB) RoundTrips() int64 { return d.trips.Load() }

// kvKey is a key of a bucket kept in p2p_kv.
type kvKey struct {
	bucket string
	key    string
}

// hotKeys is how many keys of p2p_kv a write transaction reads in its
// first round trip, at most. The store's writes read the same few
// records at every commit (the notifications' generation): read with
// the lock, they cost no round trip of their own, and they are current
// since no other write can change them until the commit.
const hotKeys = 8

// defaultMaxConns is the pool size unless the URL sets pool_max_conns:
// readers each hold a connection for a transaction. Fewer were tried on
// the 2-core machine running the server and PostgreSQL (p2pload, 32
// clients, 20,000 resources): 8 connections read no more resources per
// second, and once a waiting transaction was handed the connection of
// the next read to finish (see parking.wait), their p50 was no lower.
const defaultMaxConns = 32

// sessionParams are the sessions' settings unless the URL sets them.
//
// Every statement pgdb sends is a primary-key lookup, an ordered range
// scan of a primary key, or a join of such lookups over an array, and is
// prepared once per connection (pgx's statement cache). With PostgreSQL's
// default plan_cache_mode (auto) the range scans and the prefetch joins
// were planned again at every execution (their estimates with parameters
// favour custom plans), and planning cost more than running them: ~100
// µs per range scan, up to 2 ms per prefetch join on a loaded 2-core
// machine. They are planned once per connection instead; a plan is made
// again when its tables are analyzed (see analyzeFirst).
var sessionParams = map[string]string{
	"plan_cache_mode": "force_generic_plan",
}

// Open connects to the database url (postgres:// or postgresql://, with
// pgx's parameters, such as pool_max_conns) and brings its schema to the
// current version.
func Open(ctx context.Context, url string) (*DB, error) { return OpenWith(ctx, url, Options{}) }

// Options say how OpenWith opens a database.
type Options struct {
	// Logger, when set, is told of a schema brought to a newer version
	// (one Info line with the versions and how long it took).
	Logger *slog.Logger
	// KeepSchema opens the database as it is: its schema is neither
	// created nor migrated, and one that is not the current version is
	// refused (for reading a database that must not change, such as
	// the source of a copy).
	KeepSchema bool
}

// OpenWith is Open with opts.
func OpenWith(ctx context.Context, url string, opts Options) (*DB, error) {
	url = lowerScheme(url)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database %w", invalidURL(url, err))
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	for k, v := range sessionParams {
		if _, set := cfg.ConnConfig.RuntimeParams[k]; !set {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", Redact(url), err)
	}
	if opts.KeepSchema {
		if _, err := schemaVersion(ctx, pool); err != nil {
			pool.Close()
			return nil, fmt.Errorf("database %s: %w", Redact(url), err)
		}
	} else {
		began := time.Now()
		from, err := migrate(ctx, pool)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("database %s: schema: %w", Redact(url), err)
		}
		if from < len(migrations) && opts.Logger != nil {
			what := "database schema upgraded"
			if from == 0 {
				what = "database schema created"
			}
			opts.Logger.Info(what, "from_version", from, "to_version", len(migrations), "took", time.Since(began).Round(time.Millisecond))
		}
	}
	d := &DB{pool: pool, known: map[string]bool{}, params: map[string]int32{}}
	d.parking.now = time.Now
	return d, nil
}

// secretParams are the URL parameters pgx takes that hold a secret: the
// user's password and the password of the client certificate's key.
var secretParams = []string{"password", "sslpassword"}

// Redact returns url with its password replaced by xxxxx, for logs and
// errors.
func Redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(an unparsable URL)"
	}
	q := u.Query()
	redacted := false
	for _, k := range secretParams {
		if q.Has(k) {
			q.Set(k, "xxxxx")
			redacted = true
		}
	}
	if redacted {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// Check reports whether url is a PostgreSQL URL Open can use, without
// connecting: its error names what is wrong (a parameter pgx does not
// take, an sslmode, a port), never the password.
func Check(url string) error {
	url = lowerScheme(url)
	if _, err := pgxpool.ParseConfig(url); err != nil {
		return invalidURL(url, err)
	}
	return nil
}

// lowerScheme writes a URL's scheme in lower case (URL schemes are
// case-insensitive, RFC 3986 section 3.1; pgx takes only postgres:// and
// postgresql://).
func lowerScheme(url string) string {
	if scheme, rest, ok := strings.Cut(url, "://"); ok && !strings.ContainsAny(scheme, "/?#@") {
		return strings.ToLower(scheme) + "://" + rest
	}
	return url
}

// invalidURL says why pgx refused url, without its password: pgx's
// message quotes the URL, and is used only after that quote, and only if
// it holds no part of the password.
func invalidURL(url string, err error) error {
	msg := err.Error()
	if i := strings.Index(msg, "`: "); i >= 0 {
		msg = msg[i+3:]
	} else {
		msg = ""
	}
	for _, secret := range passwords(url) {
		if secret != "" && strings.Contains(msg, secret) {
			msg = ""
		}
	}
	if msg == "" {
		return fmt.Errorf("%s: not a valid PostgreSQL URL", Redact(url))
	}
	return fmt.Errorf("%s: not a valid PostgreSQL URL: %s", Redact(url), msg)
}

// passwords returns what a URL may carry as its password, parsed or not:
// the userinfo's, raw and decoded, and a password parameter's.
func passwords(s string) []string {
	var out []string
	if _, rest, ok := strings.Cut(s, "://"); ok {
		if userinfo, _, ok := strings.Cut(rest, "@"); ok {
			if _, pw, ok := strings.Cut(userinfo, ":"); ok {
				out = append(out, pw)
				if dec, err := url.PathUnescape(pw); err == nil {
					out = append(out, dec)
				}
			}
		}
	}
	if _, q, ok := strings.Cut(s, "?"); ok {
		if vals, err := url.ParseQuery(q); err == nil {
			for _, k := range secretParams {
				out = append(out, vals[k]...)
			}
		}
	}
	return out
}

// Pool returns the connection pool, for the tools that read the tables
// themselves.
func (d *DB) Pool() *pgxpool.Pool { return d.pool }

// Close ends the parked read transactions and closes the pool.
func (d *DB) Close() error {
	d.parking.close()
	d.pool.Close()
	return nil
}

// acquire returns a connection: a parked one (open is set: its finished
// read transaction is to be rolled back first) or one from the pool.
func (d *DB) acquire(ctx context.Context) (conn *pgxpool.Conn, open bool, err error) {
	if c := d.parking.take(); c != nil {
		return c, true, nil
	}
	// The pool has no connection free, or soon will not: the first of
	// a connection from the pool and one a finishing read hands over.
	c, w := d.parking.wait()
	if c != nil {
		return c, true, nil
	}
	actx, cancel := context.WithCancel(ctx)
	got := make(chan acquired, 1)
	go func() {
		c, err := d.pool.Acquire(actx)
		got <- acquired{c, err}
	}()
	select {
	case c := <-w:
		cancel()
		go func() {
			if r := <-got; r.conn != nil {
				r.conn.Release()
			}
		}()
		return c, true, nil
	case r := <-got:
		cancel()
		conn, err = r.conn, r.err
		if c := d.parking.unwait(w); c != nil {
			if conn != nil {
				conn.Release()
			}
			return c, true, nil
		}
	}
	if err != nil {
		if ce := (*pgconn.ConnectError)(nil); errors.As(err, &ce) && ctx.Err() == nil {
			return nil, false, errs.E("database", errs.Transient, unreachableRetry,
				"the database is not reachable at the moment: try again later", fmt.Errorf("%w: %w", backend.ErrUnreachable, err))
		}
		return nil, false, fmt.Errorf("database: %w", err)
	}
	return conn, false, nil
}

// acquired is the result of the pool's Acquire.
type acquired struct {
	conn *pgxpool.Conn
	err  error
}

// unreachableRetry is the Retry-After of a request that found the
// PostgreSQL server unreachable (stopped, restarting, failing over).
const unreachableRetry = 5 * time.Second

// closedBefore reports whether err, from the first round trip of a
// transaction on conn, says that the database had closed conn before
// (its session ended by pg_terminate_backend, a restart or a failover,
// while it was parked or idle in the pool): nothing of the transaction
// was done, and it can begin again on another connection. Each
// connection the pool holds may be such a one, so a transaction tries as
// many as it holds, and one more.
func (d *DB) closedBefore(ctx context.Context, conn *pgxpool.Conn, err error, attempt int) bool {
	return err != nil && ctx.Err() == nil && conn.Conn().IsClosed() && attempt <= int(d.pool.Config().MaxConns)
}

// View runs fn in a REPEATABLE READ READ ONLY transaction, begun with
// fn's first read (in the same round trip). The transaction is not
// ended when fn returns: its connection is parked (see parkTTL), so that
// a read of one statement costs one round trip.
func (d *DB) View(ctx context.Context, fn func(backend.Tx) error) error {
	conn, open, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	t := newTx(ctx, d, conn, false)
	t.open = open
	err = fn(t)
	conn = t.conn // another, when the first had been closed
	if conn == nil {
		return fmt.Errorf("database: %w", t.err)
	}
	switch {
	case t.err != nil || conn.Conn().PgConn().IsBusy():
		// The connection's state is unknown: the pool closes it
		// unless it rolls back.
		release(conn)
	case conn.Conn().PgConn().TxStatus() == 'T':
		d.parking.park(conn)
	default:
		conn.Release()
	}
	if t.err != nil {
		return fmt.Errorf("database: %w", t.err)
	}
	return err
}

// beginWrite reads the results of Update's first batch of n
// statements: the buckets' sequences into seqs, then, when hot is set,
// the values of the hot keys into vals (nil: none).
func beginWrite(br pgx.BatchResults, n int, hot bool, seqs map[string]int64, vals map[kvKey][]byte) (err error) {
	defer func() {
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}()
	if hot {
		n--
	}
	for range n - 1 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	for rows.Next() {
		var name string
		var seq int64
		if err := rows.Scan(&name, &seq); err != nil {
			rows.Close()
			return err
		}
		seqs[name] = seq
	}
	rows.Close()
	if err := rows.Err(); err != nil || !hot {
		return err
	}
	if rows, err = br.Query(); err != nil {
		return err
	}
	for rows.Next() {
		var bucket string
		var key, v []byte
		if err := rows.Scan(&bucket, &key, &v); err != nil {
			rows.Close()
			return err
		}
		vals[kvKey{bucket, string(key)}] = v
	}
	rows.Close()
	return rows.Err()
}

// Update runs fn in a write transaction under the database's write lock
// and commits what fn changed when it returns nil.
func (d *DB) Update(ctx context.Context, fn func(backend.Tx) error) error {
	conn, open, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	seqs := map[string]int64{}
	hotVals := map[kvKey][]byte{}
	for attempt := 0; ; attempt++ {
		clear(seqs)
		b := &pgx.Batch{}
		if open {
			b.Queue("ROLLBACK")
		}
		b.Queue("BEGIN")
		b.Queue("SELECT pg_advisory_xact_lock($1)", writeLock)
		// The buckets' sequences, read under the lock (no other writer
		// can change them until the commit): a write's Sequence then
		// costs no round trip. A bucket without a row, or at 0, is at 0.
		b.Queue("SELECT name, seq FROM p2p_buckets WHERE seq <> 0")
		d.mu.Lock()
		hot := d.hot
		d.mu.Unlock()
		var hotB []string
		var hotK [][]byte
		for _, k := range hot {
			hotB, hotK = append(hotB, k.bucket), append(hotK, []byte(k.key))
		}
		if len(hot) > 0 {
			b.Queue(`SELECT u.bucket, u.key, k.value FROM unnest($1::text[], $2::bytea[]) u(bucket, key)
	LEFT JOIN p2p_kv k ON k.bucket = u.bucket AND k.key = u.key`, hotB, hotK)
		}
		clear(hotVals)
		d.trips.Add(1)
		err := beginWrite(conn.SendBatch(ctx, b), b.Len(), len(hot) > 0, seqs, hotVals)
		if err == nil {
			break
		}
		if !d.closedBefore(ctx, conn, err, attempt) {
			release(conn)
			return fmt.Errorf("database: begin: %w", err)
		}
		release(conn)
		if conn, open, err = d.acquire(ctx); err != nil {
			return err
		}
	}
	defer conn.Release()
	t := newTx(ctx, d, conn, true)
	t.begun = true
	t.seqs = seqs
	for k, v := range hotVals {
		t.obucket([]byte(k.bucket)).m[k.key] = &entry{v: v, hot: true}
	}
	t.kvRead = []kvKey{}
	err = fn(t)
	if t.err == nil && t.kvRead != nil {
		d.mu.Lock()
		d.hot = t.kvRead
		d.mu.Unlock()
	}
	if err == nil && t.err == nil {
		err = t.commit()
	}
	if t.err != nil && err == nil {
		err = fmt.Errorf("database: %w", t.err)
	}
	if err != nil {
		// Ends the transaction; a broken connection is dropped by the
		// pool on release.
		d.trips.Add(1)
		conn.Exec(context.Background(), "ROLLBACK")
	}
	return err
}
