package notify

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/internal/netguard"
)

// HostPolicy decides which hosts a rest-hook Subscription may call, so that
// no one can use Subscriptions to make the server send requests to
// arbitrary addresses (internal services, cloud metadata endpoints).
//
// With no hosts listed only loopback is allowed (localhost, 127.0.0.0/8,
// ::1), which is what a developer running everything on one machine
// needs. Otherwise an endpoint's host must be listed: an exact name or IP
// ("hooks.example.org", "10.0.0.7"), optionally with a port
// ("hooks.example.org:8443"), a wildcard for subdomains
// ("*.partner.example", which does not admit partner.example itself), or
// an address range ("10.20.0.0/16"). Listed addresses and ranges are also
// what a listed name may resolve to beyond public addresses (see Guard).
//
// Plain http is allowed to loopback only; any other host needs https, as
// rest-hook requests carry the Subscription's headers (often credentials)
// and the resources themselves.
type HostPolicy struct {
	rules []hostRule
}

type hostRule struct {
	host     string // lower case; without the "*." of a wildcard
	wildcard bool
	port     string       // "" for any
	prefix   netip.Prefix // an IP (as /32, /128) or a range; invalid for names
}

// ParseHosts reads a comma-separated host list (the -subscription-hosts
// flag). An empty list allows loopback only.
func ParseHosts(list string) (*HostPolicy, error) {
	p := &HostPolicy{}
	for _, item := range strings.Split(list, ",") {
		item = strings.ToLower(strings.TrimSpace(item))
		if item == "" {
			continue
		}
		if strings.Contains(item, "/") && !strings.Contains(item, "://") {
			pr, err := netguard.ParsePrefix(item)
			if err != nil {
				return nil, fmt.Errorf("subscription host %q: %w", item, err)
			}
			p.rules = append(p.rules, hostRule{host: pr.String(), prefix: pr})
			continue
		}
		if strings.Contains(item, "://") || strings.ContainsAny(item, "/?#@ ") {
			return nil, fmt.Errorf("subscription host %q: give a host name or IP, optionally with :port, not a URL", item)
		}
		r := hostRule{host: item}
		if h, port, err := net.SplitHostPort(item); err == nil {
			r.host, r.port = h, port
		} else if strings.Count(item, ":") > 1 {
			// A bare IPv6 address.
			r.host = strings.Trim(item, "[]")
		}
		if rest, ok := strings.CutPrefix(r.host, "*."); ok {
			r.host, r.wildcard = rest, true
		}
		if r.host == "" || strings.Contains(r.host, "*") {
			return nil, fmt.Errorf("subscription host %q: a wildcard is only allowed as the first label, as in *.example.org", item)
		}
		if ip, err := netip.ParseAddr(r.host); err == nil {
			if r.wildcard {
				return nil, fmt.Errorf("subscription host %q: an IP address cannot have a wildcard", item)
			}
			ip = ip.Unmap().WithZone("")
			r.host, r.prefix = ip.String(), netip.PrefixFrom(ip, ip.BitLen())
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

// LoopbackOnly reports whether the policy allows loopback hosts only (no
// hosts were listed).
func (p *HostPolicy) LoopbackOnly() bool { return p == nil || len(p.rules) == 0 }

// String describes the policy for messages and logs.
func (p *HostPolicy) String() string {
	if p.LoopbackOnly() {
		return "loopback only (localhost, 127.0.0.1, ::1)"
	}
	var parts []string
	for _, r := range p.rules {
		h := r.host
		if r.wildcard {
			h = "*." + h
		}
		if r.port != "" {
			h = net.JoinHostPort(h, r.port)
		}
		parts = append(parts, h)
	}
	return strings.Join(parts, ", ")
}

// isLoopbackName reports whether host (a URL's hostname) is loopback by
// name or address.
func isLoopbackName(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Check returns nil when a rest-hook may POST to u, or an error saying why
// not, in words for the Subscription's author.
func (p *HostPolicy) Check(u *url.URL) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("the endpoint must be an http or https URL, not %q", u.Scheme)
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if host == "" {
		return fmt.Errorf("the endpoint URL has no host")
	}
	if u.User != nil {
		return fmt.Errorf("the endpoint URL must not carry a user name or password; put credentials in channel.header")
	}
	loop := isLoopbackName(host)
	if !loop && u.Scheme != "https" {
		return fmt.Errorf("the endpoint must use https (plain http is allowed to loopback only)")
	}
	if p.LoopbackOnly() {
		if !loop {
			return fmt.Errorf("host %s is not allowed: this server calls loopback hosts only (configure -subscription-hosts to allow others)", host)
		}
		return nil
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	ip, err := netip.ParseAddr(host)
	if err == nil {
		ip = ip.Unmap().WithZone("")
		host = ip.String()
	}
	for _, r := range p.rules {
		if r.port != "" && r.port != port {
			continue
		}
		if r.prefix.IsValid() && ip.IsValid() && r.prefix.Contains(ip) {
			return nil
		}
		if (!r.wildcard && host == r.host) || (r.wildcard && strings.HasSuffix(host, "."+r.host)) {
			return nil
		}
	}
	return fmt.Errorf("host %s is not allowed: -subscription-hosts lists %s", net.JoinHostPort(host, port), p)
}

// Guard is the outbound policy rest-hook connections are checked with,
// after name resolution: in loopback-only mode only loopback is reached;
// with hosts listed, public addresses and the addresses and ranges the
// list names (a listed name is not a range: "localhost" or an internal
// name that resolves to a loopback, private or link-local address is
// refused unless that address or its range is listed too).
func (p *HostPolicy) Guard() *netguard.Policy {
	if p.LoopbackOnly() {
		return &netguard.Policy{Allow: netguard.Loopback, Setting: "-subscription-hosts (empty: loopback only)"}
	}
	g := &netguard.Policy{Public: true, Setting: "-subscription-hosts"}
	for _, r := range p.rules {
		if r.prefix.IsValid() {
			g.Allow = append(g.Allow, r.prefix)
		}
	}
	return g
}

// client returns the HTTP client rest-hooks are delivered with: no proxy
// from the environment (a proxy would hide the real destination from the
// policy), every connection checked after resolution by Guard, and no
// redirects followed (a redirect answer counts as a failed delivery).
func (p *HostPolicy) client(timeout time.Duration, guard *netguard.Policy) *http.Client {
	tr := guard.Transport()
	tr.TLSHandshakeTimeout = timeout
	tr.ResponseHeaderTimeout = timeout
	tr.MaxIdleConnsPerHost = 4
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
