package pgdb

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// A read transaction ends without a round trip of its own: its
// connection is parked, still in the transaction, and the next
// transaction to take it sends ROLLBACK in the same round trip as its
// BEGIN and first statement. A connection parked for parkTTL is rolled
// back and returned to the pool, so that a snapshot holds back
// PostgreSQL's vacuum for no longer than that, and an idle process holds
// no transaction open.
const parkTTL = 50 * time.Millisecond

// parking holds the connections parked in a finished read transaction,
// oldest first.
type parking struct {
	mu sync.Mutex
	// waiters are the transactions waiting for a connection of the
	// pool, oldest first: a finished read's connection is handed to the
	// oldest, still in its transaction, rather than parked, where only
	// the transactions that come after it would find it (and the
	// waiters only once swept back to the pool, which a busy process
	// may never do).
	waiters []chan *pgxpool.Conn
	conns   []parked
	timer   *time.Timer // pending sweep; nil when none
	closed  bool
	now     func() time.Time
}

type parked struct {
	conn *pgxpool.Conn
	at   time.Time
}

// take returns the most recently parked connection (its transaction to
// be rolled back first), or nil when none is parked.
func (p *parking) take() *pgxpool.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns)
	if n == 0 {
		return nil
	}
	c := p.conns[n-1].conn
	p.conns[n-1] = parked{}
	p.conns = p.conns[:n-1]
	return c
}

// park keeps conn, in a finished read transaction begun by at most
// parkTTL ago, for the next transaction, or hands it to the oldest
// waiter; after the pool closed it is rolled back and released at once.
func (p *parking) park(conn *pgxpool.Conn) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		release(conn)
		return
	}
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		w <- conn // buffered: never blocks
		return
	}
	p.conns = append(p.conns, parked{conn: conn, at: p.now()})
	if p.timer == nil {
		p.timer = time.AfterFunc(parkTTL, p.sweep)
	}
	p.mu.Unlock()
}

// wait returns a parked connection, or else a channel on which park
// hands one over; a waiter that got a connection elsewhere calls
// unwait.
func (p *parking) wait() (*pgxpool.Conn, chan *pgxpool.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.conns); n > 0 {
		c := p.conns[n-1].conn
		p.conns[n-1] = parked{}
		p.conns = p.conns[:n-1]
		return c, nil
	}
	w := make(chan *pgxpool.Conn, 1)
	p.waiters = append(p.waiters, w)
	return nil, w
}

// unwait ends the wait on w, and returns the connection handed over on
// it meanwhile, if any.
func (p *parking) unwait(w chan *pgxpool.Conn) *pgxpool.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.Index(p.waiters, w); i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
		return nil
	}
	return <-w // handed over before the lock: already sent
}

// sweep rolls back and releases the connections parked for parkTTL or
// longer, and comes back for the others.
func (p *parking) sweep() {
	p.mu.Lock()
	now := p.now()
	i := 0
	for i < len(p.conns) && now.Sub(p.conns[i].at) >= parkTTL {
		i++
	}
	old := make([]*pgxpool.Conn, i)
	for j := range i {
		old[j] = p.conns[j].conn
	}
	p.conns = append(p.conns[:0], p.conns[i:]...)
	clear(p.conns[len(p.conns):cap(p.conns)])
	if len(p.conns) > 0 {
		p.timer = time.AfterFunc(parkTTL-now.Sub(p.conns[0].at), p.sweep)
	} else {
		p.timer = nil
	}
	p.mu.Unlock()
	for _, c := range old {
		release(c)
	}
}

// close rolls back and releases every parked connection, and parks none
// from now on.
func (p *parking) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	p.mu.Unlock()
	for _, c := range conns {
		release(c.conn)
	}
}

// release ends conn's transaction, if any, and returns it to the pool (a
// connection that cannot be rolled back is closed by the pool).
func release(conn *pgxpool.Conn) {
	if conn.Conn().PgConn().TxStatus() != 'I' {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn.Exec(ctx, "ROLLBACK")
		cancel()
	}
	conn.Release()
}
