package limit

import (
	"io"
	"net/http"
	"time"
)

// Deadlines bounds how long a client may take to send a request's body
// and to take each part of its answer, per request (the server's own
// ReadTimeout and WriteTimeout would also bound the handler's work, and
// cancel a long request's context when they pass):
//
//   - a request with a body must have sent all of it within read from
//     when the handler starts; past that its reads fail (handlers answer
//     408) and the connection is closed. Once the body is read the
//     deadline is lifted, so a long handler is not cut short;
//   - each write of the answer must be taken by the client within write;
//     a client that reads slower is disconnected.
//
// A zero duration leaves that side unbounded.
func Deadlines(read, write time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rc := http.NewResponseController(w)
			if read > 0 && r.Body != nil && r.Body != http.NoBody {
				// A body left unread keeps the deadline: the server
				// discards the rest of it within the same time, or closes
				// the connection.
				if rc.SetReadDeadline(time.Now().Add(read)) == nil {
					r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
				}
			}
			var dw *deadlineWriter
			if write > 0 {
				dw = &deadlineWriter{ResponseWriter: w, rc: rc, d: write}
				w = dw
			}
			next.ServeHTTP(w, r)
			if dw != nil && !dw.wrote {
				// An answer without a body (or none written: net/http
				// answers 200) goes out now, with its headers: bounded
				// too, for a client that sends requests without reading
				// the answers.
				_ = rc.SetWriteDeadline(time.Now().Add(write))
			}
		})
	}
}

// deadlineBody lifts the read deadline once the body has been read, so
// that the server's wait for the client's next request (or its going
// away, which cancels the request's context) is not cut short.
type deadlineBody struct {
	io.ReadCloser
	rc     *http.ResponseController
	lifted bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.lift()
	}
	return n, err
}

func (b *deadlineBody) lift() {
	if !b.lifted {
		b.lifted = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
}

// deadlineWriter gives each write of the answer its own deadline. The
// headers get none of their own: net/http sends them with the first
// bytes of the body, whose write sets one (or, without a body, when the
// handler returns), and setting one for them too cost every answer a
// second call into the network poller.
type deadlineWriter struct {
	http.ResponseWriter
	rc    *http.ResponseController
	d     time.Duration
	wrote bool // a write set a deadline
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.wrote = true
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection's writer
// (flushing, deadlines).
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
