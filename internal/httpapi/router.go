package httpapi

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"
)

// NewRouter returns a chi router for /api whose unknown routes, wrong methods
// and handler panics are answered in the JSON error shape rather than as text.
// Mount it with root.Mount("/api", r) and register the packages' routes on it.
func NewRouter(logger *slog.Logger) chi.Router {
	if logger == nil {
		logger = slog.Default()
	}
	r := chi.NewRouter()
	r.Use(recoverJSON(logger))
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, NotFound("no such API route: %s", r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, Errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method %s is not allowed on %s", r.Method, r.URL.Path))
	})
	return r
}

// recoverJSON turns a handler panic into a logged 500 in the JSON shape.
// http.ErrAbortHandler is re-raised: net/http uses it to abort a response on
// purpose.
func recoverJSON(logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				if v == http.ErrAbortHandler {
					panic(v)
				}
				logger.Error("api: handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				WriteError(w, Errorf(http.StatusInternalServerError, CodeInternal, internalMessage))
			}()
			next.ServeHTTP(w, r)
		})
	}
}
