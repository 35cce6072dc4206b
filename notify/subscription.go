package notify

import (
	"fmt"
	"net/http"
	"net/mail"
	"net/url"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Channel types this server delivers.
const (
	ChannelRestHook = "rest-hook"
	ChannelEmail    = "email"
)

// Subscription statuses (http://hl7.org/fhir/subscription-status).
const (
	StatusRequested = "requested"
	StatusActive    = "active"
	StatusError     = "error"
	StatusOff       = "off"
)

// Payloads of a rest-hook channel: none (a ping, no body) or the resource.
const (
	PayloadFHIRJSON = "application/fhir+json"
)

// Payloads of an email channel: the body format.
const (
	// EmailText sends plain text only.
	EmailText = "text/plain"
	// EmailHTML sends HTML with a plain-text alternative; it is also what
	// an email channel without a payload sends.
	EmailHTML = "text/html"
)

// ExtResourceRecipients is the Subscription extension (valueBoolean) that
// makes an email channel also write to the addresses the matching resource
// names itself, such as the requester-email input of an add-payer Task;
// the Template for the resource says which addresses those are. With it,
// channel.endpoint may be left out.
const ExtResourceRecipients = "http://payer-to-payer-exchange/StructureDefinition/subscription-email-resource-recipients"

// header is one rest-hook header.
type header struct{ name, value string }

// subscription is a Subscription as the server uses it.
type subscription struct {
	id, status string
	version    int64
	criteria   string
	query      *search.Query
	channel    string
	endpoint   string
	endpointU  *url.URL // rest-hook
	payload    string
	headers    []header
	to         []string // email addresses of a mailto endpoint
	resourceTo bool     // ExtResourceRecipients
	end        time.Time
	owner      *owner // whom it acts for; nil when none is recorded
}

// ended reports whether the Subscription's end has passed.
func (s *subscription) ended(now time.Time) bool { return !s.end.IsZero() && !now.Before(s.end) }

// reservedHeaders may not be set by a Subscription: the server sets them.
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Type": true, "Content-Length": true, "Transfer-Encoding": true,
	"Connection": true, HeaderNotificationID: true, HeaderSubscription: true,
}

// resultParams are search parameters about the shape of a result page;
// they mean nothing for deciding whether one resource matches.
var resultParams = map[string]bool{
	"_count": true, "_sort": true, "_include": true, "_include:iterate": true, "_revinclude": true,
	"_revinclude:iterate": true, "_summary": true, "_elements": true, "_total": true, "_contained": true,
	"_containedType": true, "_format": true, "_pretty": true, "_page": true, "_cursor": true,
}

// decode reads a Subscription resource. It checks everything that does
// not depend on this server's configuration: the criteria parse, the
// channel type is supported, the endpoint, payload and headers are well
// formed. Each problem is one issue.
func (n *Service) decode(id string, version int64, m map[string]any) (*subscription, []errs.Issue) {
	var issues []errs.Issue
	add := func(code, path, format string, args ...any) {
		issues = append(issues, errs.Issue{Code: code, Path: path, Message: fmt.Sprintf(format, args...)})
	}
	s := &subscription{id: id, version: version}
	s.status, _ = m["status"].(string)
	s.criteria, _ = m["criteria"].(string)
	if q, err := n.parseCriteria(s.criteria); err != nil {
		add("value", "Subscription.criteria", "%s", err.Error())
	} else {
		s.query = q
	}
	if end, ok := m["end"].(string); ok {
		t, err := time.Parse(time.RFC3339Nano, end)
		if err != nil {
			add("value", "Subscription.end", "end %q is not an instant with a time zone", end)
		}
		s.end = t
	}
	for _, e := range asList(m["extension"]) {
		em, _ := e.(map[string]any)
		if em["url"] == ExtResourceRecipients {
			b, ok := em["valueBoolean"].(bool)
			if !ok {
				add("value", "Subscription.extension", "the extension %s needs a valueBoolean", ExtResourceRecipients)
			}
			s.resourceTo = b
		}
	}
	ch, _ := m["channel"].(map[string]any)
	s.channel, _ = ch["type"].(string)
	s.endpoint, _ = ch["endpoint"].(string)
	s.payload, _ = ch["payload"].(string)
	rawHeaders := asList(ch["header"])
	switch s.channel {
	case ChannelRestHook:
		if s.resourceTo {
			add("business-rule", "Subscription.extension", "the extension %s applies to email channels only", ExtResourceRecipients)
		}
		if s.endpoint == "" {
			add("required", "Subscription.channel.endpoint", "a rest-hook channel needs an endpoint: the URL the server POSTs to")
		} else if u, err := url.Parse(s.endpoint); err != nil || !u.IsAbs() || u.Host == "" {
			add("value", "Subscription.channel.endpoint", "the endpoint %q is not an absolute URL", s.endpoint)
		} else if u.Fragment != "" {
			add("value", "Subscription.channel.endpoint", "the endpoint must not have a #fragment")
		} else {
			s.endpointU = u
		}
		switch s.payload {
		case "", PayloadFHIRJSON:
		case "application/json", "application/json+fhir":
			s.payload = PayloadFHIRJSON
		default:
			add("not-supported", "Subscription.channel.payload",
				"payload %q is not supported for rest-hook: leave it out for a ping without a body, or use %s for the resource", s.payload, PayloadFHIRJSON)
		}
		for i, h := range rawHeaders {
			str, _ := h.(string)
			name, value, ok := strings.Cut(str, ":")
			name, value = strings.TrimSpace(name), strings.TrimSpace(value)
			path := fmt.Sprintf("Subscription.channel.header[%d]", i)
			switch {
			case !ok || !validHeaderName(name):
				add("value", path, "a header must read \"Name: value\" with a valid header name")
			case strings.ContainsAny(value, "\r\n\x00"):
				add("value", path, "a header value must not contain line breaks")
			case reservedHeaders[http.CanonicalHeaderKey(name)]:
				add("business-rule", path, "the header %s is set by the server and cannot be configured", http.CanonicalHeaderKey(name))
			default:
				s.headers = append(s.headers, header{http.CanonicalHeaderKey(name), value})
			}
		}
	case ChannelEmail:
		if len(rawHeaders) > 0 {
			add("business-rule", "Subscription.channel.header", "headers apply to rest-hook channels only")
		}
		switch s.payload {
		case "", EmailHTML, EmailText:
		default:
			add("not-supported", "Subscription.channel.payload",
				"payload %q is not supported for email: use %s (plain text) or %s (HTML with a plain-text alternative)", s.payload, EmailText, EmailHTML)
		}
		switch {
		case s.endpoint == "" && !s.resourceTo:
			add("required", "Subscription.channel.endpoint", "an email channel needs an endpoint such as mailto:admin@example.org")
		case s.endpoint != "":
			to, err := parseMailto(s.endpoint)
			if err != nil {
				add("value", "Subscription.channel.endpoint", "%s", err.Error())
			}
			s.to = to
		}
	case "":
		add("required", "Subscription.channel.type", "the channel needs a type: rest-hook or email")
	default:
		add("not-supported", "Subscription.channel.type", "channel type %s is not supported by this server; use rest-hook or email", s.channel)
	}
	return s, issues
}

// parseCriteria parses "Type?param=value&..." (or "Type" for every write
// of the type) into a query.
func (n *Service) parseCriteria(c string) (*search.Query, error) {
	if c == "" {
		return nil, fmt.Errorf("criteria is required: a search such as Task?code=...&status=requested")
	}
	typ, raw, _ := strings.Cut(c, "?")
	if strings.Contains(typ, "/") {
		return nil, fmt.Errorf("criteria %q must be a type-level search (Type?params), not a URL with a path", c)
	}
	if !n.reg.Model().IsResource(typ) {
		return nil, fmt.Errorf("criteria %q must start with a resource type, as in Task?status=requested", c)
	}
	params, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("the query of criteria %q cannot be parsed", c)
	}
	for name := range params {
		if resultParams[name] {
			return nil, fmt.Errorf("criteria cannot use %s: it shapes a result page and says nothing about which resources match", name)
		}
	}
	q, err := n.reg.Parse(typ, params, search.Options{Base: n.base})
	if err != nil {
		msg, issues := errs.Public(err)
		for _, is := range issues {
			msg += "; " + is.Message
		}
		return nil, fmt.Errorf("criteria %q: %s", c, msg)
	}
	return q, nil
}

// check adds the problems that depend on this server's configuration: the
// host policy for rest-hook endpoints, a mail server for email channels.
func (n *Service) check(s *subscription) []errs.Issue {
	var issues []errs.Issue
	switch s.channel {
	case ChannelRestHook:
		if s.endpointU != nil {
			if err := n.hosts.Check(s.endpointU); err != nil {
				issues = append(issues, errs.Issue{Code: "security", Path: "Subscription.channel.endpoint", Message: err.Error()})
			}
		}
	case ChannelEmail:
		if n.mailer == nil {
			issues = append(issues, errs.Issue{Code: "not-supported", Path: "Subscription.channel.type",
				Message: "email channels need a mail server, and this server has none configured (-smtp-url)"})
		}
	}
	return issues
}

// validate is the fhir validator of Subscriptions: a Subscription written
// requested or active is checked and stored active, or refused with every
// problem; off is stored as it is; error is the server's to set.
func (n *Service) validate(tx *store.Tx, doc *store.Doc, prev *store.Version) error {
	const op = "notify.subscription"
	hs, issues := n.sealHeaders(tx, doc)
	if len(issues) > 0 {
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("the Subscription's channel.header cannot be stored (%d problems)", len(issues)), issues)
	}
	status, _ := doc.Map["status"].(string)
	if err := n.recordOwner(tx, doc, hs, status); err != nil {
		return err
	}
	switch status {
	case StatusOff:
		return nil
	case StatusError:
		if prev != nil && statusOf(prev.JSON) == StatusError {
			return nil
		}
		return errs.E(op, errs.Unprocessable, "status error is set by the server",
			errs.Issue{Code: "business-rule", Path: "Subscription.status",
				Message: "error is set by the server when delivery keeps failing; write requested to (re)activate the Subscription, or off to stop it"})
	case StatusRequested, StatusActive:
	default:
		return errs.E(op, errs.Unprocessable, "unknown status",
			errs.Issue{Code: "value", Path: "Subscription.status", Message: fmt.Sprintf("status %q is not requested, active, error or off", status)})
	}
	s, issues := n.decode(doc.ID, 0, doc.Map)
	issues = append(issues, n.check(s)...)
	if len(issues) == 0 && s.query != nil {
		// Each write is matched against the active Subscriptions on its
		// type: their number is bounded.
		idx, err := n.index(tx)
		if err != nil {
			return err
		}
		if have := idx.activeOn(s.query.Type, doc.ID); have >= n.cfg.MaxPerType {
			issues = append(issues, errs.Issue{Code: "business-rule", Path: "Subscription.criteria", Message: fmt.Sprintf(
				"this server keeps at most %d active Subscriptions on %s (-max-subscriptions-per-type) and has %d; turn one off or delete it first",
				n.cfg.MaxPerType, s.query.Type, have)})
		}
	}
	if len(issues) > 0 {
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("the Subscription cannot be activated (%d problems)", len(issues)), issues)
	}
	if err := doc.Set("status", StatusActive); err != nil {
		return errs.E(op, errs.Internal, err)
	}
	if err := doc.Set("error", nil); err != nil {
		return errs.E(op, errs.Internal, err)
	}
	return nil
}

// recordOwner records whom doc acts for (see owner): the writer, when the
// write sets what the Subscription sends where (it is new, or its
// criteria or channel changed); otherwise the owner stays. A writer
// becoming the owner of an active Subscription must be allowed to read
// what its criteria match (the Subscriptions Backport IG,
// safety_security.html: a Subscription's topic and filters are weighed
// when its creation is authorized).
func (n *Service) recordOwner(tx *store.Tx, doc *store.Doc, hs []header, status string) error {
	s, _ := n.decode(doc.ID, 0, doc.Map)
	sends := sendsDigest(s, hs)
	cur, err := storedOwner(tx, doc.ID)
	if err != nil {
		return errs.E("notify.subscription", errs.Internal, err)
	}
	o, writer := cur, cur == nil || cur.Sends != sends
	p := authz.FromContext(tx.Context())
	if writer {
		o = ownerOf(p, n.reg.Model().ResourceTypes(), sends)
	}
	if (status == StatusRequested || status == StatusActive) && s.query != nil && !o.principal().CanRead(s.query.Type) {
		typ := s.query.Type
		msg := fmt.Sprintf("a Subscription on %s resources sends what it matches: the token's scopes must allow reading %s (a scope such as %s/%s.rs, or a v1 equivalent)",
			typ, typ, level(p), typ)
		if !writer {
			msg = fmt.Sprintf("the Subscription acts for whoever last set its criteria and channel, who may not read %s resources: write them again with a token that may", typ)
		}
		return errs.E("notify.subscription", errs.Permission, msg, errs.Issue{Code: "forbidden", Path: "Subscription.criteria", Message: msg})
	}
	if !writer {
		return nil
	}
	return putOwner(tx, doc.ID, o)
}

func level(p *authz.Principal) string {
	switch {
	case p.Member():
		return "patient"
	case p.Level != "":
		return p.Level
	}
	return "system"
}

// parseMailto reads "mailto:a@example.org,b@example.org".
func parseMailto(endpoint string) ([]string, error) {
	rest, ok := strings.CutPrefix(endpoint, "mailto:")
	if !ok {
		return nil, fmt.Errorf("an email endpoint must be a mailto: URL, such as mailto:admin@example.org")
	}
	if strings.Contains(rest, "?") {
		return nil, fmt.Errorf("the mailto: endpoint must list addresses only, without ?subject= or other fields")
	}
	rest, err := url.PathUnescape(rest)
	if err != nil {
		return nil, fmt.Errorf("the mailto: endpoint has a malformed %%-escape")
	}
	var out []string
	seen := map[string]bool{}
	for _, a := range strings.Split(rest, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if err := CheckAddress(a); err != nil {
			return nil, err
		}
		if key := strings.ToLower(a); !seen[key] {
			seen[key] = true
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the mailto: endpoint lists no address")
	}
	return out, nil
}

// CheckAddress returns nil when a is a bare email address (local@domain,
// no display name or angle brackets) whose domain has at least two labels,
// and an error in words otherwise.
func CheckAddress(a string) error {
	p, err := mail.ParseAddress(a)
	if err != nil || p.Name != "" || p.Address != a {
		return fmt.Errorf("%q is not an email address such as name@example.org", a)
	}
	at := strings.LastIndexByte(a, '@')
	domain := a[at+1:]
	if !strings.Contains(domain, ".") || strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") || strings.Contains(domain, "..") {
		return fmt.Errorf("%q is not an email address such as name@example.org: the domain %q is incomplete", a, domain)
	}
	return nil
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}
