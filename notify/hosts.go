package notify

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// HostPolicy decides which hosts a rest-hook Subscription may call, so that
// no one can use Subscriptions to make the server send requests to
// arbitrary addresses (internal services, cloud metadata endpoints).
//
// With no hosts listed only loopback is allowed (localhost, 127.0.0.0/8,
// ::1), which is what a developer running everything on one machine
// needs. Otherwise an endpoint's host must be listed: an exact name or IP
// ("hooks.example.org", "10.0.0.7"), optionally with a port
// ("hooks.example.org:8443"), or a wildcard for subdomains
// ("*.partner.example", which does not admit partner.example itself).
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
	port     string // "" for any
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
			r.host = ip.Unmap().String()
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
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	}
	for _, r := range p.rules {
		if r.port != "" && r.port != port {
			continue
		}
		if (!r.wildcard && host == r.host) || (r.wildcard && strings.HasSuffix(host, "."+r.host)) {
			return nil
		}
	}
	return fmt.Errorf("host %s is not allowed: -subscription-hosts lists %s", net.JoinHostPort(host, port), p)
}

// dialAllowed checks the address a connection is about to be made to,
// after name resolution: a name on the list must not lead to a loopback,
// link-local (cloud metadata) or unspecified address unless that address
// itself is listed, and in loopback-only mode only loopback is reached.
func (p *HostPolicy) dialAllowed(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("not an IP address: %s", host)
	}
	ip = ip.Unmap()
	if p.LoopbackOnly() {
		if !ip.IsLoopback() {
			return fmt.Errorf("%s is not a loopback address", ip)
		}
		return nil
	}
	if ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() || ip.IsMulticast() {
		for _, r := range p.rules {
			if r.host == ip.String() {
				return nil
			}
		}
		return fmt.Errorf("%s is a link-local, multicast or unspecified address; list it in -subscription-hosts to allow it", ip)
	}
	return nil
}

// client returns the HTTP client rest-hooks are delivered with: no proxy
// from the environment (a proxy would hide the real destination from the
// policy), every connection checked after resolution, and no redirects
// followed (a redirect answer counts as a failed delivery).
func (p *HostPolicy) client(timeout time.Duration) *http.Client {
	dialer := &net.Dialer{
		Timeout: timeout,
		Control: func(_, address string, _ syscall.RawConn) error {
			return p.dialAllowed(address)
		},
	}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
