package notify

import (
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestHostPolicy(t *testing.T) {
	for _, bad := range []string{"https://hooks.example.org", "hooks.example.org/path", "*.*.example.org", "a.*.example.org", "*.10.0.0.1", "user@host"} {
		if _, err := ParseHosts(bad); err == nil {
			t.Errorf("ParseHosts(%q) accepted", bad)
		}
	}
	loop, err := ParseHosts(" , ")
	if err != nil || !loop.LoopbackOnly() {
		t.Fatalf("empty list: %v %v", loop, err)
	}
	listed, err := ParseHosts("Hooks.Example.org, *.partner.example:8443, 10.0.0.7, [::1]:9000, 169.254.169.254")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		p    *HostPolicy
		url  string
		want string // "" allowed, else part of the refusal
	}{
		{loop, "http://127.0.0.1:8080/hook", ""},
		{loop, "http://localhost/hook", ""},
		{loop, "http://[::1]:9/hook", ""},
		{loop, "https://127.0.0.5/hook", ""},
		{loop, "https://hooks.example.org/hook", "loopback hosts only"},
		{loop, "ftp://127.0.0.1/x", "http or https"},
		{loop, "http://u:p@127.0.0.1/x", "user name or password"},
		{listed, "https://hooks.example.org/p2p", ""},
		{listed, "https://HOOKS.example.org./p2p", ""},
		{listed, "http://hooks.example.org/p2p", "must use https"},
		{listed, "https://x.hooks.example.org/p2p", "not allowed"},
		{listed, "https://a.partner.example:8443/p2p", ""},
		{listed, "https://a.b.partner.example:8443/p2p", ""},
		{listed, "https://a.partner.example/p2p", "not allowed"},
		{listed, "https://partner.example:8443/p2p", "not allowed"},
		{listed, "https://10.0.0.7/p2p", ""},
		{listed, "https://10.0.0.8/p2p", "not allowed"},
		{listed, "http://[::1]:9000/p2p", ""},
		{listed, "http://127.0.0.1/p2p", "not allowed"},
	}
	for _, c := range cases {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		err = c.p.Check(u)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s (%s): %v", c.url, c.p, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s (%s): %v, want %q", c.url, c.p, err, c.want)
		}
	}
	// After name resolution (netguard checks the address dialled): loopback
	// mode reaches loopback only; with hosts listed, public addresses and
	// the listed addresses and ranges only, so a listed name that resolves
	// to loopback, a private range or link-local (cloud metadata) is
	// refused unless that address or range is itself listed.
	ranged, err := ParseHosts("hooks.example.org, 10.20.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ParseHosts("hooks.example.org, localhost")
	dial := []struct {
		p    *HostPolicy
		addr string
		ok   bool
	}{
		{loop, "127.0.0.1", true},
		{loop, "::1", true},
		{loop, "10.0.0.1", false},
		{loop, "93.184.216.34", false},
		{listed, "93.184.216.34", true},
		{listed, "169.254.169.254", true},
		{listed, "10.0.0.7", true},
		{listed, "10.0.0.8", false},
		{listed, "::1", true},
		{listed, "127.0.0.1", false},
		{listed, "fe80::1", false},
		{listed, "0.0.0.0", false},
		{other, "169.254.169.254", false},
		{other, "127.0.0.1", false}, // "localhost" names a host, not the loopback range
		{ranged, "10.20.3.4", true},
		{ranged, "10.21.0.1", false},
	}
	for _, d := range dial {
		if err := d.p.Guard().Check("h", netip.MustParseAddr(d.addr)); (err == nil) != d.ok {
			t.Errorf("dial %s under %s: %v, want allowed=%v", d.addr, d.p, err, d.ok)
		}
	}
	u, _ := url.Parse("https://10.20.9.9/hook")
	if err := ranged.Check(u); err != nil {
		t.Errorf("an address in a listed range: %v", err)
	}
}

func TestBackoffDoublesUpToTheCapWithJitter(t *testing.T) {
	n := &Service{cfg: Config{Backoff: time.Second, MaxBackoff: 20 * time.Second}}
	for attempts, base := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 5: 16 * time.Second, 6: 20 * time.Second, 30: 20 * time.Second} {
		seen := map[time.Duration]bool{}
		for i := 0; i < 50; i++ {
			d := n.backoff(attempts)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("attempt %d: %s, want %s ±20%%", attempts, d, base)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("attempt %d: %d distinct waits in 50; the jitter is missing", attempts, len(seen))
		}
	}
}

func TestParseMailto(t *testing.T) {
	got, err := parseMailto("mailto:a@example.org,%20B@example.org,a@example.org")
	if err != nil || len(got) != 2 || got[1] != "B@example.org" {
		t.Errorf("parseMailto: %v %v", got, err)
	}
	for _, bad := range []string{"a@example.org", "mailto:", "mailto:a@example.org?subject=hi", "mailto:a@example", "mailto:A <a@example.org>"} {
		if _, err := parseMailto(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
