// Package netguard decides which network addresses the server's outbound
// HTTP clients may connect to, and enforces it on the address actually
// dialled, after DNS resolution. Every outbound client of p2pserver is
// built from a Policy: rest-hook Subscriptions (notify), source payers'
// FHIR and token endpoints (batch, oidcservers), OIDC discovery and key
// sets (smart, oidcservers), the eligibility vendors, Healthie, and the
// connection to the mail server (notify).
//
// Checking a URL's host name is not enough: a name on an allow list, or
// an administrator's fhirEndpoint, can resolve (or be re-pointed by its
// owner) to 127.0.0.1, a private range or a cloud metadata address such as
// 169.254.169.254. So a Policy resolves the name itself, checks every
// address it would dial, dials only the allowed ones by address, and
// checks the address again in the net.Dialer's Control function, which
// sees the socket address the kernel is asked to connect to.
//
// # The rule
//
// An address is allowed when it lies in a range the policy names
// (Policy.Allow), or when it is a public unicast address and the policy
// allows public addresses (Policy.Public). Everything else is refused:
// loopback, private (RFC 1918, IPv6 unique local), link-local (which holds
// the cloud metadata endpoints), shared address space (RFC 6598),
// unspecified, multicast, broadcast, reserved, documentation and
// benchmarking ranges, and IPv6 prefixes that carry an IPv4 address
// (NAT64, 6to4, Teredo), after IPv4-mapped IPv6 addresses are unmapped.
// The list follows the IANA IPv4 and IPv6 Special-Purpose Address
// Registries (RFC 6890).
//
// A host name is never a range: listing "hooks.example.org" or
// "localhost" lets a URL name that host, but the address it resolves to
// must still be public or in a named range.
//
// Clients built by a Policy ignore HTTP_PROXY and friends: a proxy would
// hide the real destination from the check.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// Policy says which addresses outbound connections may reach. The zero
// value allows nothing. A Policy is safe for concurrent use once built.
type Policy struct {
	// Public allows public unicast addresses (not in any special-purpose
	// range).
	Public bool
	// Allow lists the ranges that may be reached although they are not
	// public (loopback, a private network...).
	Allow []netip.Prefix
	// Setting names the configuration that sets the policy, for refusal
	// messages ("-outbound-allow").
	Setting string
	// Lookup resolves a host name; default net.DefaultResolver's
	// LookupNetIP. Tests set it to make a name resolve where they want.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// Named ranges accepted by ParseRanges.
var (
	// Loopback is 127.0.0.0/8 and ::1.
	Loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	// Private is RFC 1918 and IPv6 unique local addresses.
	Private = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fc00::/7")}
	// LinkLocal is 169.254.0.0/16 (cloud metadata endpoints live there) and
	// fe80::/10.
	LinkLocal = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fe80::/10")}
)

// special are the ranges that are not public, with what they are (IANA
// special-purpose registries; IPv4-mapped addresses are unmapped before
// the check).
var special = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "a \"this network\" address"},
	{netip.MustParsePrefix("10.0.0.0/8"), "a private address"},
	{netip.MustParsePrefix("100.64.0.0/10"), "a shared (carrier-grade NAT) address"},
	{netip.MustParsePrefix("127.0.0.0/8"), "a loopback address"},
	{netip.MustParsePrefix("169.254.0.0/16"), "a link-local address (where cloud metadata endpoints live)"},
	{netip.MustParsePrefix("172.16.0.0/12"), "a private address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol address"},
	{netip.MustParsePrefix("192.0.2.0/24"), "a documentation address"},
	{netip.MustParsePrefix("192.88.99.0/24"), "a 6to4 relay address"},
	{netip.MustParsePrefix("192.168.0.0/16"), "a private address"},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address"},
	{netip.MustParsePrefix("198.51.100.0/24"), "a documentation address"},
	{netip.MustParsePrefix("203.0.113.0/24"), "a documentation address"},
	{netip.MustParsePrefix("224.0.0.0/4"), "a multicast address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved or broadcast address"},
	{netip.MustParsePrefix("::/128"), "the unspecified address"},
	{netip.MustParsePrefix("::1/128"), "a loopback address"},
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address (it carries an IPv4 address)"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "a NAT64 address (it carries an IPv4 address)"},
	{netip.MustParsePrefix("100::/64"), "a discard-only address"},
	{netip.MustParsePrefix("2001::/32"), "a Teredo address (it carries an IPv4 address)"},
	{netip.MustParsePrefix("2001:2::/48"), "a benchmarking address"},
	{netip.MustParsePrefix("2001:db8::/32"), "a documentation address"},
	{netip.MustParsePrefix("2002::/16"), "a 6to4 address (it carries an IPv4 address)"},
	{netip.MustParsePrefix("fc00::/7"), "a private (unique local) address"},
	{netip.MustParsePrefix("fe80::/10"), "a link-local address"},
	{netip.MustParsePrefix("fec0::/10"), "a site-local address"},
	{netip.MustParsePrefix("ff00::/8"), "a multicast address"},
}

// Kind says what kind of address ip is: "" for a public unicast address,
// else a phrase such as "a loopback address".
func Kind(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	for _, s := range special {
		if s.prefix.Contains(ip) {
			return s.what
		}
	}
	return ""
}

// Default is the policy of a package used without one: public addresses
// and loopback, as a development setup on one machine needs. The binary
// builds its own from -outbound-allow.
func Default() *Policy {
	return &Policy{Public: true, Allow: Loopback, Setting: "-outbound-allow"}
}

// ParseRanges reads a comma-separated list of ranges: "loopback",
// "private", "link-local", a CIDR prefix ("10.20.0.0/16") or one address;
// "none" (alone) or an empty list names none.
func ParseRanges(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	items := strings.Split(list, ",")
	for _, item := range items {
		item = strings.ToLower(strings.TrimSpace(item))
		switch item {
		case "":
			continue
		case "none":
			if strings.TrimSpace(list) != "none" {
				return nil, errors.New(`"none" cannot be combined with ranges`)
			}
			continue
		case "loopback":
			out = append(out, Loopback...)
			continue
		case "private":
			out = append(out, Private...)
			continue
		case "link-local":
			out = append(out, LinkLocal...)
			continue
		}
		p, err := ParsePrefix(item)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// ParsePrefix reads a CIDR prefix or a single address (as a /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address range such as 10.20.0.0/16, loopback, private or link-local", s)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address range such as 10.20.0.0/16, loopback, private or link-local", s)
	}
	ip = ip.Unmap().WithZone("")
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

// RefusedError is a connection the policy did not allow.
type RefusedError struct {
	// Host is the name (or address) the request was for.
	Host string
	// Addr is the address refused.
	Addr netip.Addr
	// Why says what kind of address it is.
	Why string
	// Setting names the configuration that would allow it.
	Setting string
}

func (e *RefusedError) Error() string {
	to := e.Addr.String()
	if e.Host != "" && e.Host != to {
		to = e.Host + " (" + to + ")"
	}
	msg := fmt.Sprintf("connection to %s refused: %s is %s", to, e.Addr, e.Why)
	if e.Setting != "" {
		msg += fmt.Sprintf(", which %s does not allow", e.Setting)
	}
	return msg
}

// IsRefused reports whether err (or an error it wraps) is a refusal by a
// Policy.
func IsRefused(err error) bool {
	var re *RefusedError
	return errors.As(err, &re)
}

// Check returns nil when ip may be reached, or a *RefusedError (host names
// what the request was for, in the message).
func (p *Policy) Check(host string, ip netip.Addr) error {
	ip = ip.Unmap().WithZone("")
	for _, r := range p.Allow {
		if r.Contains(ip) {
			return nil
		}
	}
	why := Kind(ip)
	if why == "" {
		if p.Public {
			return nil
		}
		why = "a public address"
	}
	return &RefusedError{Host: host, Addr: ip, Why: why, Setting: p.Setting}
}

func (p *Policy) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if p.Lookup != nil {
		return p.Lookup(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// control is the net.Dialer Control function: it sees the address the
// socket is about to connect to.
func (p *Policy) control(host string) func(network, address string, _ syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("netguard: dialling %q, which is not an IP address and port", address)
		}
		return p.Check(host, ap.Addr())
	}
}

// DialContext connects like net.Dialer.DialContext, to the allowed
// addresses of address's host only. When every address is refused the
// error is a *RefusedError.
func (p *Policy) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return p.dial(ctx, &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}, network, address)
}

func (p *Policy) dial(ctx context.Context, d *net.Dialer, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		if addrs, err = p.lookup(ctx, host); err != nil {
			return nil, err
		}
	}
	dialer := *d
	dialer.Control = p.control(host)
	var refused, failed error
	for _, ip := range addrs {
		ip = ip.Unmap()
		switch {
		case strings.HasSuffix(network, "4") && !ip.Is4(), strings.HasSuffix(network, "6") && !ip.Is6():
			continue
		}
		if err := p.Check(host, ip); err != nil {
			if refused == nil {
				refused = err
			}
			continue
		}
		conn, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		failed = err
	}
	switch {
	case failed != nil:
		return nil, failed
	case refused != nil:
		return nil, refused
	}
	return nil, &net.DNSError{Err: "no usable address", Name: host, IsNotFound: true}
}

// Transport returns an http.Transport whose every connection is checked
// by p, with no proxy from the environment; the other settings are
// http.DefaultTransport's.
func (p *Policy) Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	t.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		return p.dial(ctx, d, network, address)
	}
	t.DialTLSContext = nil
	return t
}

// Client returns an http.Client over p.Transport with the given overall
// timeout (0 for none).
func (p *Policy) Client(timeout time.Duration) *http.Client {
	return &http.Client{Transport: p.Transport(), Timeout: timeout}
}

// String describes the policy for logs: "public, 127.0.0.0/8, ::1/128".
func (p *Policy) String() string {
	var parts []string
	if p.Public {
		parts = append(parts, "public addresses")
	}
	for _, r := range p.Allow {
		parts = append(parts, r.String())
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}
