package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/netguard"
)

// result is what one delivery attempt came to.
type result struct {
	ok bool
	// drop, when set, removes the notification unsent: its Subscription is
	// gone, off or ended.
	drop string
	err  error
	// counted: the attempt reached (or tried to reach) the endpoint and
	// counts towards MaxAttempts.
	counted bool
	// permanent: trying again cannot help; the notification fails now.
	permanent bool
	// subError: the Subscription itself is at fault (its endpoint is no
	// longer allowed); it is set to error now.
	subError bool
}

// target is what a delivery needs, read in one snapshot.
type target struct {
	entry *Notification
	sub   *subscription
	res   *store.Version
	prev  *store.Version
}

// deliver makes one attempt at notification seq, under its lease l, and
// records the result. A lease lost meanwhile cuts the attempt short and
// leaves the notification to the process that took it.
func (n *Service) deliver(ctx context.Context, seq uint64, l *lease.Lease) {
	defer func() {
		// Not when the Service stops: the lease is handed over by the
		// lease manager's Close, or expires if the process dies.
		if ctx.Err() == nil && l.Context().Err() == nil {
			_ = l.Release(ctx)
		}
	}()
	workCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(l.Context(), cancel)
	defer stop()
	var t target
	var res result
	err := n.st.View(ctx, func(tx *store.Tx) error {
		var err error
		t, res, err = n.read(tx, seq)
		return err
	})
	if err != nil {
		if ctx.Err() == nil {
			n.log.Error("notify: read a notification", "seq", seq, "err", err)
		}
		return
	}
	if t.entry == nil {
		return
	}
	if res == (result{}) {
		start := time.Now()
		res = n.send(workCtx, t)
		if workCtx.Err() != nil && !res.ok {
			// Cut short by Close or a lost lease: not the endpoint's
			// fault; tried again by whoever holds it next.
			return
		}
		n.log.Debug("notify: delivery", "id", t.entry.ID, "subscription", t.entry.Subscription, "channel", t.entry.Channel,
			"resource", t.entry.Resource, "attempt", t.entry.Attempts+1, "ok", res.ok, "err", errText(res.err), "took", time.Since(start))
		if !res.ok {
			// One warning per Subscription and period, not per attempt.
			n.failures.note(t.entry.Subscription, t.entry.Endpoint, errText(res.err), n.now())
		}
	}
	// Recorded even when Close has begun (the store closes after the
	// Service): a delivery that went through is not sent again.
	if err := n.record(context.WithoutCancel(ctx), seq, res, l); err != nil {
		if errors.Is(err, lease.ErrLost) {
			n.log.Warn("notify: a delivery's lease was taken over while it was made; the other process sends it again", "id", t.entry.ID)
			return
		}
		n.log.Error("notify: record a delivery", "id", t.entry.ID, "err", err)
	}
}

// read loads a pending notification, its Subscription and the resource
// version. A non-zero result means the notification is settled without
// sending (Subscription gone, off or in error).
func (n *Service) read(tx *store.Tx, seq uint64) (target, result, error) {
	var t target
	e, err := getEntry(tx, seq)
	if err != nil || e == nil || e.Status != StatePending {
		return t, result{}, err
	}
	t.entry = e
	sv, err := tx.Read("Subscription", e.Subscription)
	switch {
	case errs.Is(err, errs.NotFound), errs.Is(err, errs.Gone):
		return t, result{drop: "its Subscription was deleted"}, nil
	case err != nil:
		return t, result{}, err
	}
	r, err := decodeResource(sv.Type, sv.ID, sv.VersionID, sv.LastUpdated, sv.JSON)
	if err != nil {
		return t, result{}, err
	}
	sub, issues := n.decode(sv.ID, sv.VersionID, r.Map)
	switch {
	case sub.status == StatusOff:
		return t, result{drop: "its Subscription was turned off"}, nil
	case sub.status == StatusError:
		return t, result{permanent: true, err: fmt.Errorf("not sent: Subscription/%s is in error; it is sent when the Subscription is re-activated (status requested)", sub.id)}, nil
	case sub.ended(n.now()):
		return t, result{drop: "its Subscription has ended"}, nil
	case len(issues) > 0:
		return t, result{permanent: true, subError: true, err: fmt.Errorf("the Subscription is no longer valid: %s", issues[0].Message)}, nil
	case sub.channel != e.Channel:
		return t, result{drop: "its Subscription's channel changed"}, nil
	}
	if sub.channel == ChannelRestHook && len(sub.headers) > 0 {
		// The resource shows masked values; the real ones are sealed.
		if sub.headers, err = n.storedHeaders(tx, sub.id); err != nil {
			return t, result{permanent: true, subError: true, err: errors.New("the Subscription's channel.header values cannot be decrypted with this server's secret key; write them again")}, nil
		}
	}
	t.sub = sub
	o, err := storedOwner(tx, sub.id)
	if err != nil {
		return t, result{}, err
	}
	if o == nil {
		return t, result{permanent: true, subError: true, err: errNoOwner(sub.id)}, nil
	}
	typ, id, _ := strings.Cut(e.Resource, "/")
	if t.res, err = tx.VRead(typ, id, e.Version); err != nil {
		if errs.Is(err, errs.NotFound) {
			return t, result{drop: "the resource version is gone"}, nil
		}
		return t, result{}, err
	}
	// Checked again when it is sent: only what the owner may read now
	// (the Subscriptions Backport IG, safety_security.html: servers
	// "SHOULD ensure that authorization is (still) in place when sending
	// any event notifications").
	pol, who := n.fs.Policy(), o.principal()
	if !pol.CanSee(tx, who, t.res) {
		return t, result{drop: fmt.Sprintf("the Subscription's owner may not read %s version %d now; nothing was sent", e.Resource, e.Version)}, nil
	}
	if e.Version > 1 {
		if p, err := tx.VRead(typ, id, e.Version-1); err == nil && pol.CanSee(tx, who, p) {
			t.prev = p
		}
	}
	return t, result{}, nil
}

// send makes the attempt.
func (n *Service) send(ctx context.Context, t target) result {
	switch t.sub.channel {
	case ChannelRestHook:
		return n.post(ctx, t)
	case ChannelEmail:
		return n.email(ctx, t)
	}
	return result{permanent: true, subError: true, err: fmt.Errorf("channel type %s is not supported", t.sub.channel)}
}

// post calls a rest-hook endpoint.
func (n *Service) post(ctx context.Context, t target) result {
	s := t.sub
	if err := n.hosts.Check(s.endpointU); err != nil {
		// The policy changed since the Subscription was accepted.
		return result{permanent: true, subError: true, err: err}
	}
	var body io.Reader
	if s.payload == PayloadFHIRJSON {
		body = bytes.NewReader(t.res.JSON)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, body)
	if err != nil {
		return result{permanent: true, subError: true, err: fmt.Errorf("the endpoint cannot be requested: %w", err)}
	}
	for _, h := range s.headers {
		req.Header.Add(h.name, h.value)
	}
	req.Header.Set(HeaderNotificationID, t.entry.ID)
	req.Header.Set(HeaderSubscription, "Subscription/"+s.id)
	req.Header.Set("User-Agent", "p2pserver-notify")
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json; charset=utf-8")
	}
	resp, err := n.client.Do(req)
	if err != nil {
		if netguard.IsRefused(err) {
			// The endpoint's name leads to an address the policy does not
			// allow: nothing was sent, and the Subscription's author is
			// told why in Subscription.error.
			return result{counted: true, permanent: true, subError: true, err: fmt.Errorf("POST %s: %s", s.endpoint, netError(err))}
		}
		return result{counted: true, err: fmt.Errorf("POST %s: %s", s.endpoint, netError(err))}
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return result{ok: true}
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return result{counted: true, err: fmt.Errorf("POST %s answered %s, a redirect to %q; redirects are not followed",
			s.endpoint, resp.Status, resp.Header.Get("Location"))}
	}
	msg := fmt.Sprintf("POST %s answered %s", s.endpoint, resp.Status)
	if txt := printable(snippet); txt != "" {
		msg += ": " + txt
	}
	return result{counted: true, err: errors.New(msg)}
}

// email sends one email.
func (n *Service) email(ctx context.Context, t target) result {
	if n.mailer == nil {
		return result{counted: true, err: errors.New("no mail server is configured (-smtp-url)")}
	}
	cur, err := decodeResource(t.res.Type, t.res.ID, t.res.VersionID, t.res.LastUpdated, t.res.JSON)
	if err != nil {
		return result{permanent: true, err: err}
	}
	var prev *Resource
	if t.prev != nil {
		if prev, err = decodeResource(t.prev.Type, t.prev.ID, t.prev.VersionID, t.prev.LastUpdated, t.prev.JSON); err != nil {
			return result{permanent: true, err: err}
		}
	}
	ev := Event{
		Subscription: t.sub.id, Resource: cur, Previous: prev, Audience: t.entry.Audience,
		Link: fmt.Sprintf("%s/%s/%s/_history/%d", n.base, cur.Type, cur.ID, cur.VersionID),
	}
	m, err := n.templateFor(cur).Compose(ev)
	if err != nil {
		return result{permanent: true, err: fmt.Errorf("the email could not be written: %w", err)}
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	err = n.mailer.Send(ctx, Outgoing{ID: t.entry.ID, To: t.entry.Endpoint, Mail: m, TextOnly: t.sub.payload == EmailText})
	switch {
	case err == nil:
		return result{ok: true}
	case errors.Is(err, errRecipientRefused) && t.entry.Audience == AudienceResource:
		// An address the resource gave (a member's) that the mail server
		// will never take: this notification fails, the Subscription, which
		// serves everyone else, stays active.
		return result{counted: true, permanent: true, err: fmt.Errorf("to %s via %s: %w", t.entry.Endpoint, n.mailer.Server(), err)}
	}
	return result{counted: true, err: fmt.Errorf("to %s via %s: %w", t.entry.Endpoint, n.mailer.Server(), err)}
}

// record writes the result of an attempt to the outbox, if this process
// still holds the delivery's lease l, and releases it.
func (n *Service) record(ctx context.Context, seq uint64, res result, l *lease.Lease) error {
	return n.st.Write(ctx, func(tx *store.Tx) error {
		if err := l.Check(tx); err != nil {
			return err
		}
		if err := l.ReleaseTx(tx); err != nil {
			return err
		}
		e, err := getEntry(tx, seq)
		if err != nil || e == nil || e.Status != StatePending {
			return err
		}
		now := n.now()
		switch {
		case res.ok:
			return deleteEntry(tx, e)
		case res.drop != "":
			n.log.Info("notify: notification dropped", "id", e.ID, "subscription", e.Subscription, "why", res.drop)
			return deleteEntry(tx, e)
		}
		oldDue := e.NextAttempt
		if res.counted {
			e.Attempts++
			e.LastAttempt = now
		}
		e.LastError = clip(errText(res.err), 1000)
		exhausted := res.counted && e.Attempts >= n.cfg.MaxAttempts
		if res.permanent || exhausted {
			e.Status, e.FailedAt, e.NextAttempt = StateFailed, now, time.Time{}
		} else {
			e.NextAttempt = now.Add(n.backoff(e.Attempts))
		}
		if err := putEntry(tx, e, oldDue); err != nil {
			return err
		}
		if res.subError || (exhausted && !(res.permanent && e.Audience == AudienceResource)) {
			what := fmt.Sprintf("delivery to %s failed %d times; the last attempt, at %s, failed: %s",
				e.Endpoint, e.Attempts, now.Format(time.RFC3339), e.LastError)
			if res.subError {
				what = e.LastError
			}
			return n.setError(tx, e.Subscription, what)
		}
		return nil
	})
}

// setError sets an active Subscription to error with the reason in
// Subscription.error, through a store write (the hook sees it, and the
// change is in the resource's history).
func (n *Service) setError(tx *store.Tx, id, why string) error {
	v, err := tx.Read("Subscription", id)
	if err != nil {
		if errs.Is(err, errs.NotFound) || errs.Is(err, errs.Gone) {
			return nil
		}
		return err
	}
	if statusOf(v.JSON) != StatusActive {
		return nil
	}
	doc, err := n.fs.ParseResource(v.JSON, "Subscription")
	if err != nil {
		return errs.E("notify.error", errs.Internal, err)
	}
	if err := doc.Set("status", StatusError); err != nil {
		return err
	}
	if err := doc.Set("error", why); err != nil {
		return err
	}
	if _, err := tx.Put(doc, store.PutOptions{IfMatch: v.VersionID}); err != nil {
		return err
	}
	n.log.Warn("notify: Subscription set to error", "subscription", id, "why", why)
	return nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// netError shortens a transport error to what an administrator needs.
func netError(err error) string {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner.Error()
		}
	}
	return err.Error()
}

// printable returns the start of a response body when it is text.
func printable(b []byte) string {
	s := strings.TrimSpace(string(b))
	if !utf8.ValidString(s) {
		return ""
	}
	return clip(strings.Join(strings.Fields(s), " "), 200)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
