package addpayer

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/notify"
)

// SubscriptionID is the fixed id of the default Subscription: restarts find
// it instead of creating another.
const SubscriptionID = "p2p-add-payer-notifications"

// Criteria of the default Subscription: every write of an add-payer Task.
const Criteria = "Task?code=" + CodeSystem + "|" + Code

// Subscription returns the default Subscription: email, on every
// add-payer Task event, to admins (the channel's mailto: endpoint, left
// out when there are none) and to the member (the Task's requester-email,
// through notify.ExtResourceRecipients), HTML with a plain-text
// alternative.
func Subscription(admins []string) (*store.Doc, error) {
	channel := map[string]any{"type": notify.ChannelEmail, "payload": notify.EmailHTML}
	if len(admins) > 0 {
		channel["endpoint"] = "mailto:" + strings.Join(admins, ",")
	}
	m := map[string]any{
		"resourceType": "Subscription",
		"id":           SubscriptionID,
		"extension":    []any{map[string]any{"url": notify.ExtResourceRecipients, "valueBoolean": true}},
		"status":       notify.StatusRequested,
		"reason":       "Tell the payer's administrators and the member by email when an add-payer request is made and each time its status changes",
		"criteria":     Criteria,
		"channel":      channel,
	}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	// The decoded form as the store reads it (json.Number numbers, []any).
	dm, err := decode(body)
	if err != nil {
		return nil, err
	}
	return &store.Doc{Type: "Subscription", ID: SubscriptionID, Map: dm, JSON: body}, nil
}

// Setup adds the add-payer email template to n and makes sure the default
// Subscription exists. It is created (active) when absent; when present, its
// mailto: endpoint is brought in line with admins, and everything else —
// its status above all, so that an administrator's "off" stands — is left
// as it is. Every admin address must be valid. Without a mail server
// nothing is created (and a warning is logged).
func Setup(ctx context.Context, n *notify.Service, admins []string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	for _, a := range admins {
		if err := notify.CheckAddress(a); err != nil {
			return fmt.Errorf("-notify-admins: %w", err)
		}
	}
	n.AddTemplate(Template())
	if !n.EmailEnabled() {
		log.Warn("notify: no mail server is configured (-smtp-url): add-payer requests are not emailed, and the default Subscription is not created")
		return nil
	}
	doc, err := Subscription(admins)
	if err != nil {
		return err
	}
	want, _ := doc.Map["channel"].(map[string]any)["endpoint"].(string)
	created, err := n.Ensure(ctx, doc, func(cur *store.Doc) (bool, error) {
		ch, _ := cur.Map["channel"].(map[string]any)
		have, _ := ch["endpoint"].(string)
		if have == want || ch == nil {
			return false, nil
		}
		nch := make(map[string]any, len(ch))
		for k, v := range ch {
			nch[k] = v
		}
		if want == "" {
			delete(nch, "endpoint")
		} else {
			nch["endpoint"] = want
		}
		log.Info("notify: default add-payer Subscription: admin addresses updated", "subscription", SubscriptionID, "admins", len(admins))
		return true, cur.Set("channel", nch)
	})
	if err != nil {
		return fmt.Errorf("default add-payer Subscription: %w", err)
	}
	if created {
		log.Info("notify: default add-payer Subscription created", "subscription", SubscriptionID, "admins", len(admins))
	}
	return nil
}
