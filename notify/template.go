package notify

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"strings"
	"time"
)

// Resource is one version of a resource, decoded, as templates see it.
type Resource struct {
	Type, ID    string
	VersionID   int64
	LastUpdated time.Time
	// Map is the resource decoded with json.Number numbers.
	Map map[string]any
}

// Ref returns "Type/id".
func (r *Resource) Ref() string { return r.Type + "/" + r.ID }

// Audience is who an email is written for.
type Audience string

// The audiences of an email channel.
const (
	// AudienceSubscriber is the addresses of the channel's mailto:
	// endpoint: the people who set the Subscription up (for the default
	// add-payer Subscription, the payer's administrators).
	AudienceSubscriber Audience = "subscriber"
	// AudienceResource is the addresses the resource names itself (see
	// ExtResourceRecipients), such as the member who made a request.
	AudienceResource Audience = "resource"
)

// Event is one matching write, as a template writes an email about it.
type Event struct {
	// Subscription is the id of the Subscription that matched.
	Subscription string
	// Resource is the version written; Previous the one before it (nil on
	// a create).
	Resource, Previous *Resource
	// Audience is who the email is for.
	Audience Audience
	// Link is the URL of the resource version on this server.
	Link string
}

// Mail is the content of one email.
type Mail struct {
	Subject string
	// Text is the plain-text body; HTML the HTML body (used unless the
	// channel's payload is text/plain).
	Text, HTML string
}

// Template writes the emails about one kind of resource. The notify
// Service uses the first template added whose Applies is true, and a
// generic one otherwise.
type Template interface {
	// Applies reports whether the template writes about r.
	Applies(r *Resource) bool
	// Notable reports whether the write of cur (after prev, nil on a
	// create) deserves an email; it lets a template skip writes a reader
	// would not care about. Rest-hooks are called for every write.
	Notable(prev, cur *Resource) bool
	// Recipients returns the addresses r names itself, written to under
	// AudienceResource when the Subscription has ExtResourceRecipients.
	Recipients(r *Resource) []string
	// Compose writes the email for ev.
	Compose(ev Event) (Mail, error)
}

// genericTemplate writes a short factual email about any resource.
type genericTemplate struct{}

func (genericTemplate) Applies(*Resource) bool           { return true }
func (genericTemplate) Notable(_, _ *Resource) bool      { return true }
func (genericTemplate) Recipients(r *Resource) []string  { return nil }
func (g genericTemplate) Compose(ev Event) (Mail, error) { return genericMail(ev) }

var genericHTML = template.Must(template.New("generic").Parse(`<!DOCTYPE html>
<html><body style="font-family:sans-serif">
<p>{{.What}}</p>
{{if .Status}}<p>Status: <strong>{{.Status}}</strong>{{if .Was}} (was {{.Was}}){{end}}</p>{{end}}
<p><a href="{{.Link}}">{{.Ref}}</a> (version {{.Version}}, {{.When}})</p>
<p style="color:#666;font-size:small">You receive this because Subscription/{{.Subscription}} on this server matched the change.</p>
</body></html>
`))

func genericMail(ev Event) (Mail, error) {
	r := ev.Resource
	verb := "updated"
	if ev.Previous == nil {
		verb = "created"
	}
	data := struct {
		What, Status, Was, Link, Ref, When, Subscription string
		Version                                          int64
	}{
		What:         fmt.Sprintf("%s was %s.", r.Ref(), verb),
		Link:         ev.Link,
		Ref:          r.Ref(),
		When:         r.LastUpdated.UTC().Format("2006-01-02 15:04 MST"),
		Subscription: ev.Subscription,
		Version:      r.VersionID,
	}
	data.Status, _ = r.Map["status"].(string)
	if ev.Previous != nil {
		if was, _ := ev.Previous.Map["status"].(string); was != data.Status {
			data.Was = was
		}
	}
	subject := fmt.Sprintf("%s was %s", r.Ref(), verb)
	if data.Status != "" {
		subject += ": " + data.Status
	}
	var text strings.Builder
	text.WriteString(data.What + "\n\n")
	if data.Status != "" {
		fmt.Fprintf(&text, "Status: %s", data.Status)
		if data.Was != "" {
			fmt.Fprintf(&text, " (was %s)", data.Was)
		}
		text.WriteString("\n")
	}
	fmt.Fprintf(&text, "%s (version %d, %s)\n\nYou receive this because Subscription/%s on this server matched the change.\n",
		data.Link, data.Version, data.When, data.Subscription)
	var html bytes.Buffer
	if err := genericHTML.Execute(&html, data); err != nil {
		return Mail{}, err
	}
	return Mail{Subject: subject, Text: text.String(), HTML: html.String()}, nil
}

// decodeResource decodes a stored version.
func decodeResource(typ, id string, version int64, lastUpdated time.Time, body []byte) (*Resource, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("notify: decode %s/%s: %w", typ, id, err)
	}
	return &Resource{Type: typ, ID: id, VersionID: version, LastUpdated: lastUpdated, Map: m}, nil
}

// statusOf returns the top-level status of a stored resource.
func statusOf(body []byte) string {
	var v struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(body, &v)
	return v.Status
}
