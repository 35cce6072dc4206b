package addpayer

import (
	"bytes"
	"fmt"
	"html/template"
	"strings"
	texttemplate "text/template"

	"github.com/p2pserver/p2pserver/fhir/workflow"
	"github.com/p2pserver/p2pserver/notify"
)

// wording is what the emails say about one status: for the member, a short
// form for the subject, what happened and what happens next; for the
// payer's staff, what to do.
type wording struct {
	short, happened, next string
	staff                 string
}

// words is written for a member who knows nothing of FHIR: what happened,
// and what happens next. {payer} stands for the payer asked for.
var words = map[string]wording{
	workflow.Draft: {"saved as a draft",
		"Your request to add {payer} is saved as a draft. It has not been sent to us yet.",
		"When you are ready, submit it in the member portal.",
		"Nothing to do until the member submits it."},
	workflow.Requested: {"we received it",
		"We have received your request to add {payer}, so that your health records held by {payer} can be brought over to us.",
		"Our team will review your request. We will email you at each step; you do not need to do anything now.",
		"Review the request: accept it (status accepted) or reject it with the reason in statusReason (status rejected)."},
	workflow.Received: {"under review",
		"Our team has started reviewing your request to add {payer}.",
		"We will email you when it is accepted.",
		"Decide whether to accept or reject it."},
	workflow.Accepted: {"accepted",
		"Your request to add {payer} has been accepted.",
		"Next, we will ask {payer} for your health records. We will email you when copying starts.",
		"Start a P2P batch job with the member's authorization and link it to this Task (taskId) to copy the records."},
	workflow.Ready: {"ready to start",
		"Your request to add {payer} is ready to start.",
		"We will email you when we begin copying your health records from {payer}.",
		"Start a P2P batch job with the member's authorization and link it to this Task (taskId)."},
	workflow.InProgress: {"copying your records",
		"We are now copying your health records from {payer}.",
		"This can take some time. We will email you when it is finished.",
		"A batch job is copying the records; follow it in the batch job API. A job that fails for a cause on the payers' side leaves the request in progress: fix the cause and start a new job for this Task (Task.output lists every job)."},
	workflow.OnHold: {"paused",
		"Work on your request to add {payer} is paused.",
		"We will email you when it continues. If we need anything from you, we will contact you.",
		"Find out why it is paused and resume it."},
	workflow.Completed: {"done",
		"Your health records from {payer} have been copied to us.",
		"You can see them in the member portal. There is nothing else you need to do.",
		"Nothing to do."},
	workflow.Failed: {"could not be finished",
		"We could not finish copying your health records from {payer}.",
		"To bring your records over, make a new request in the member portal; you will be asked to sign in at {payer} again. You can also contact us.",
		"The request is closed and the member was told why: a batch job failed for a cause only the member can remove (their authorization ended), or the request was failed by hand. Only a new request from the member can continue."},
	workflow.Rejected: {"not accepted",
		"We could not accept your request to add {payer}.",
		"If you think this is a mistake, contact us or make a new request in the member portal.",
		"Nothing to do; the member was told."},
	workflow.Cancelled: {"cancelled",
		"Your request to add {payer} was cancelled.",
		"No records will be copied. You can make a new request at any time in the member portal.",
		"Nothing to do."},
	workflow.EnteredInError: {"withdrawn",
		"Your request to add {payer} was withdrawn because it was entered by mistake.",
		"You do not need to do anything.",
		"Nothing to do."},
}

// Template returns the notify.Template of add-payer Tasks: member-facing
// emails for the requester-email input, staff-facing ones for the
// Subscription's own addresses.
func Template() notify.Template { return mailTemplate{} }

type mailTemplate struct{}

// Applies reports whether r is an add-payer Task.
func (mailTemplate) Applies(r *notify.Resource) bool { return r.Type == "Task" && Is(r.Map) }

// Notable is true for a new request and for a change of status,
// statusReason or businessStatus: edits of anything else do not email the
// member.
func (mailTemplate) Notable(prev, cur *notify.Resource) bool {
	if prev == nil {
		return true
	}
	return prev.Map["status"] != cur.Map["status"] ||
		conceptText(prev.Map["statusReason"]) != conceptText(cur.Map["statusReason"]) ||
		conceptText(prev.Map["businessStatus"]) != conceptText(cur.Map["businessStatus"])
}

// Recipients is the member's requester-email.
func (mailTemplate) Recipients(r *notify.Resource) []string {
	if a := Input(r.Map, InputEmail); a != "" {
		return []string{a}
	}
	return nil
}

// view is what the message templates read.
type view struct {
	Member                                    bool
	FirstName, FullName, Payer, Email, Phone  string
	Status, Was, Short                        string
	Happened, Next, Staff                     string
	Reason, Details                           string
	Identifier, Task, Link, Requester, Owner  string
	Authored, Modified, Created, Subscription string
}

// Compose writes the email for ev.
func (mailTemplate) Compose(ev notify.Event) (notify.Mail, error) {
	m := ev.Resource.Map
	v := view{
		Member:       ev.Audience == notify.AudienceResource,
		FirstName:    Input(m, InputFirstName),
		Payer:        Input(m, InputPayerName),
		Email:        Input(m, InputEmail),
		Phone:        Input(m, InputPhone),
		Reason:       conceptText(m["statusReason"]),
		Details:      conceptText(m["businessStatus"]),
		Task:         ev.Resource.Ref(),
		Link:         ev.Link,
		Requester:    refOf(m["requester"]),
		Owner:        refOf(m["owner"]),
		Subscription: ev.Subscription,
	}
	v.FullName = strings.TrimSpace(v.FirstName + " " + Input(m, InputLastName))
	if v.Payer == "" {
		v.Payer = "your previous payer"
	}
	v.Status, _ = m["status"].(string)
	v.Authored, _ = m["authoredOn"].(string)
	v.Modified, _ = m["lastModified"].(string)
	for _, id := range list(m["identifier"]) {
		im, _ := id.(map[string]any)
		if im["system"] == CodeSystem {
			v.Identifier, _ = im["value"].(string)
		}
	}
	if ev.Previous == nil {
		v.Created = "new"
	} else if was, _ := ev.Previous.Map["status"].(string); was != v.Status {
		v.Was = was
	}
	w, ok := words[v.Status]
	if !ok {
		w = wording{v.Status, "Your request to add {payer} is now " + v.Status + ".", "We will email you when it changes.", "Check the Task."}
	}
	v.Short = w.short
	v.Happened = strings.ReplaceAll(w.happened, "{payer}", v.Payer)
	v.Next = strings.ReplaceAll(w.next, "{payer}", v.Payer)
	v.Staff = w.staff

	var subject string
	switch {
	case v.Member:
		subject = fmt.Sprintf("Your request to add %s: %s", v.Payer, v.Short)
	case ev.Previous == nil:
		subject = fmt.Sprintf("New add-payer request from %s for %s (%s)", v.FullName, v.Payer, v.Status)
	default:
		subject = fmt.Sprintf("Add-payer request from %s for %s: %s", v.FullName, v.Payer, v.Status)
	}
	var text, html bytes.Buffer
	if err := textMessage.Execute(&text, v); err != nil {
		return notify.Mail{}, err
	}
	if err := htmlMessage.Execute(&html, v); err != nil {
		return notify.Mail{}, err
	}
	return notify.Mail{Subject: subject, Text: text.String(), HTML: html.String()}, nil
}

var textMessage = texttemplate.Must(texttemplate.New("text").Parse(`{{if .Member -}}
Dear {{if .FirstName}}{{.FirstName}}{{else}}member{{end}},

{{.Happened}}
{{if .Reason}}
Reason: {{.Reason}}
{{end}}{{if .Details}}
{{.Details}}
{{end}}
What happens next: {{.Next}}

Your request: {{.Identifier}}

You receive this email because a request to add a payer was made in our
member portal with this address. If you did not make it, please contact us.
{{- else -}}
{{if .Created}}A new add-payer request was made.{{else}}An add-payer request changed.{{end}}

Member:     {{.FullName}} ({{.Requester}})
Payer:      {{.Payer}} ({{.Owner}})
Status:     {{.Status}}{{if .Was}} (was {{.Was}}){{end}}
{{- if .Reason}}
Reason:     {{.Reason}}{{end}}
{{- if .Details}}
Details:    {{.Details}}{{end}}
Email:      {{.Email}}
Phone:      {{.Phone}}
Request:    {{.Identifier}}
Made:       {{.Authored}}
Changed:    {{.Modified}}
Task:       {{.Link}}

What to do: {{.Staff}}

Sent because Subscription/{{.Subscription}} matched {{.Task}}.
{{- end}}
`))

var htmlMessage = template.Must(template.New("html").Parse(`<!DOCTYPE html>
<html><body style="font-family:sans-serif;line-height:1.4">
{{if .Member -}}
<p>Dear {{if .FirstName}}{{.FirstName}}{{else}}member{{end}},</p>
<p><strong>{{.Happened}}</strong></p>
{{if .Reason}}<p>Reason: {{.Reason}}</p>{{end}}
{{if .Details}}<p>{{.Details}}</p>{{end}}
<p><strong>What happens next:</strong> {{.Next}}</p>
<p style="color:#555">Your request: {{.Identifier}}</p>
<p style="color:#777;font-size:small">You receive this email because a request to add a payer was made in our member portal with this address. If you did not make it, please contact us.</p>
{{- else -}}
<p>{{if .Created}}A new add-payer request was made.{{else}}An add-payer request changed.{{end}}</p>
<table cellpadding="3">
<tr><th align="left">Member</th><td>{{.FullName}} ({{.Requester}})</td></tr>
<tr><th align="left">Payer</th><td>{{.Payer}} ({{.Owner}})</td></tr>
<tr><th align="left">Status</th><td><strong>{{.Status}}</strong>{{if .Was}} (was {{.Was}}){{end}}</td></tr>
{{if .Reason}}<tr><th align="left">Reason</th><td>{{.Reason}}</td></tr>{{end}}
{{if .Details}}<tr><th align="left">Details</th><td>{{.Details}}</td></tr>{{end}}
<tr><th align="left">Email</th><td>{{.Email}}</td></tr>
<tr><th align="left">Phone</th><td>{{.Phone}}</td></tr>
<tr><th align="left">Request</th><td>{{.Identifier}}</td></tr>
<tr><th align="left">Made</th><td>{{.Authored}}</td></tr>
<tr><th align="left">Changed</th><td>{{.Modified}}</td></tr>
</table>
<p><strong>What to do:</strong> {{.Staff}}</p>
<p><a href="{{.Link}}">{{.Task}}</a></p>
<p style="color:#777;font-size:small">Sent because Subscription/{{.Subscription}} matched {{.Task}}.</p>
{{- end}}
</body></html>
`))
