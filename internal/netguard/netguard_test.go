package netguard

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

// TestAddressKinds checks the special-purpose table (RFC 6890, the IANA
// IPv4 and IPv6 Special-Purpose Address Registries): every kind of address
// an outbound request could be steered to is recognized, IPv4-mapped IPv6
// addresses are unmapped first, and public addresses are not special.
func TestAddressKinds(t *testing.T) {
	for _, c := range []struct {
		ip, kind string // kind: part of Kind's phrase; "" public
	}{
		{"127.0.0.1", "loopback"}, {"127.255.0.9", "loopback"}, {"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"}, {"10.1.2.3", "private"}, {"172.31.0.1", "private"},
		{"192.168.0.1", "private"}, {"fd00::1", "private"}, {"169.254.169.254", "link-local"},
		{"fe80::1%eth0", "link-local"}, {"100.64.0.1", "shared"}, {"0.0.0.0", "this network"},
		{"::", "unspecified"}, {"224.0.0.1", "multicast"}, {"ff02::1", "multicast"},
		{"255.255.255.255", "broadcast"}, {"64:ff9b::7f00:1", "NAT64"}, {"2002:7f00:1::", "6to4"},
		{"2001::1", "Teredo"}, {"198.18.0.1", "benchmarking"}, {"192.0.2.1", "documentation"},
		{"93.184.216.34", ""}, {"8.8.8.8", ""}, {"2606:4700::1111", ""}, {"172.32.0.1", ""},
	} {
		got := Kind(netip.MustParseAddr(c.ip))
		if (c.kind == "") != (got == "") || !strings.Contains(got, c.kind) {
			t.Errorf("Kind(%s) = %q, want %q", c.ip, got, c.kind)
		}
	}
}

func TestParseRanges(t *testing.T) {
	got, err := ParseRanges("loopback, 10.20.0.0/16, 192.168.1.7, ::ffff:10.0.0.0/104")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.0/8", "::1/128", "10.20.0.0/16", "192.168.1.7/32", "10.0.0.0/8"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("range %d: %s, want %s", i, got[i], want[i])
		}
	}
	if r, err := ParseRanges("none"); err != nil || len(r) != 0 {
		t.Errorf("none: %v %v", r, err)
	}
	for _, bad := range []string{"none,loopback", "10.0.0.0/33", "example.org", "10.0.0"} {
		if _, err := ParseRanges(bad); err == nil {
			t.Errorf("ParseRanges(%q) accepted", bad)
		}
	}
}

// TestCheck is the rule as a table: public addresses when Public, special
// ones only in a named range.
func TestCheck(t *testing.T) {
	publicOnly := &Policy{Public: true, Setting: "-outbound-allow"}
	dev := Default()
	lan := &Policy{Public: true, Allow: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}, Setting: "-outbound-allow"}
	loopOnly := &Policy{Allow: Loopback, Setting: "-subscription-hosts"}
	for _, c := range []struct {
		p  *Policy
		ip string
		ok bool
	}{
		{publicOnly, "93.184.216.34", true},
		{publicOnly, "127.0.0.1", false},
		{publicOnly, "::ffff:127.0.0.1", false},
		{publicOnly, "10.20.1.1", false},
		{publicOnly, "169.254.169.254", false},
		{dev, "127.0.0.1", true},
		{dev, "::1", true},
		{dev, "169.254.169.254", false},
		{dev, "192.168.1.1", false},
		{lan, "10.20.9.9", true},
		{lan, "10.21.0.1", false},
		{lan, "127.0.0.1", false},
		{loopOnly, "127.0.0.1", true},
		{loopOnly, "93.184.216.34", false},
		{&Policy{}, "93.184.216.34", false},
	} {
		err := c.p.Check("h", netip.MustParseAddr(c.ip))
		if (err == nil) != c.ok {
			t.Errorf("%s under %s: %v, want allowed=%v", c.ip, c.p, err, c.ok)
		}
		if err != nil && (!IsRefused(err) || !strings.Contains(err.Error(), c.p.Setting)) {
			t.Errorf("refusal %v does not name %s", err, c.p.Setting)
		}
	}
}

// server is a real HTTP server on 127.0.0.1 counting its requests.
func server(t *testing.T) (port string, hits *atomic.Int64) {
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	_, port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return port, hits
}

// TestClientChecksTheResolvedAddress: the check is made on the address
// dialled after DNS resolution, so a public-looking name that resolves to
// loopback is refused (nothing reaches the server), unless the policy
// names the loopback range; an IP literal is checked the same way; a
// name with several addresses is dialled on its allowed ones only.
func TestClientChecksTheResolvedAddress(t *testing.T) {
	port, hits := server(t)
	resolve := func(addrs ...string) func(context.Context, string) ([]netip.Addr, error) {
		return func(_ context.Context, host string) ([]netip.Addr, error) {
			if host != "payer.example" {
				return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
			}
			var out []netip.Addr
			for _, a := range addrs {
				out = append(out, netip.MustParseAddr(a))
			}
			return out, nil
		}
	}
	for _, c := range []struct {
		name   string
		p      *Policy
		url    string
		ok     bool
		refuse string // part of the refusal
	}{
		{"listed name resolving to loopback", &Policy{Public: true, Lookup: resolve("127.0.0.1"), Setting: "-outbound-allow"},
			"http://payer.example:" + port + "/", false, "payer.example (127.0.0.1) refused: 127.0.0.1 is a loopback address, which -outbound-allow does not allow"},
		{"the same with loopback named", &Policy{Public: true, Allow: Loopback, Lookup: resolve("127.0.0.1")},
			"http://payer.example:" + port + "/", true, ""},
		{"name resolving to metadata and loopback", &Policy{Public: true, Allow: Loopback, Lookup: resolve("169.254.169.254", "127.0.0.1")},
			"http://payer.example:" + port + "/", true, ""},
		{"name resolving to metadata only", &Policy{Public: true, Allow: Loopback, Lookup: resolve("169.254.169.254")},
			"http://payer.example:" + port + "/", false, "link-local"},
		{"localhost through the system resolver", &Policy{Public: true},
			"http://localhost:" + port + "/", false, "loopback address"},
		{"IP literal", &Policy{Public: true}, "http://127.0.0.1:" + port + "/", false, "127.0.0.1 is a loopback address"},
		{"IPv4-mapped literal", &Policy{Public: true}, "http://[::ffff:127.0.0.1]:" + port + "/", false, "loopback address"},
		{"IP literal allowed", &Policy{Allow: Loopback}, "http://127.0.0.1:" + port + "/", true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := hits.Load()
			resp, err := c.p.Client(0).Get(c.url)
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if hits.Load() != before+1 {
					t.Fatal("the server was not reached")
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatal("allowed")
			}
			var re *RefusedError
			if !errors.As(err, &re) || !strings.Contains(err.Error(), c.refuse) {
				t.Fatalf("error %v, want a refusal with %q", err, c.refuse)
			}
			if hits.Load() != before {
				t.Fatal("the server was reached")
			}
		})
	}
}

// TestControlChecksTheSocketAddress: the Control function, which sees the
// address the kernel connects to, refuses by itself, so a dialer that
// skipped the resolution step is still held.
func TestControlChecksTheSocketAddress(t *testing.T) {
	port, hits := server(t)
	p := &Policy{Public: true}
	d := &net.Dialer{Control: p.control("127.0.0.1")}
	if conn, err := d.Dial("tcp", "127.0.0.1:"+port); err == nil || !IsRefused(err) {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("dial: %v", err)
	}
	if hits.Load() != 0 {
		t.Fatal("reached")
	}
}
