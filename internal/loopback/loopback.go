// Package loopback starts the HTTP servers of the vendor simulators: on a
// fixed address when a developer runs one by hand, on a free port of
// 127.0.0.1 in tests.
package loopback

import (
	"net"
	"net/http"
	"net/http/httptest"
)

// Serve starts h on addr ("" means 127.0.0.1 on a free port) and returns
// the running server; its URL is http://<address>.
func Serve(addr string, h http.Handler) (*httptest.Server, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	return srv, nil
}
