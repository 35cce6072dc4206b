package notify

import (
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/httpapi"
)

// API serves the admin view of the outbox under /api.
type API struct {
	n      *Service
	admin  func(http.Handler) http.Handler
	logger *slog.Logger
}

// NewAPI builds the API; admin guards every route (see httpapi.Admin).
func NewAPI(n *Service, admin func(http.Handler) http.Handler, logger *slog.Logger) *API {
	if logger == nil {
		logger = slog.Default()
	}
	return &API{n: n, admin: admin, logger: logger}
}

// Mount registers, on the router mounted at /api:
//
//	GET /notifications   pending and failed notifications (admin)
func (a *API) Mount(r chi.Router) {
	r.With(a.admin).Get("/notifications", a.list)
}

// notificationList is the answer of GET /api/notifications.
type notificationList struct {
	// Counts are the numbers of notifications by status in the whole
	// outbox, whatever the filters; queued counts those still to be made
	// from writes that matched many Subscriptions (see fanout.go).
	Counts        map[string]int `json:"counts"`
	Notifications []Notification `json:"notifications"`
	// Truncated says more matched than limit.
	Truncated bool `json:"truncated"`
}

const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

// list answers GET /api/notifications?status=pending|failed&subscription=
// &resource=&limit=: the matching notifications, newest first.
func (a *API) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	fields := map[string]string{}
	for k := range q {
		switch k {
		case "status", "subscription", "resource", "limit":
		default:
			fields[k] = "unknown parameter; use status, subscription, resource or limit"
		}
	}
	want := map[string]bool{}
	for _, v := range q["status"] {
		for _, s := range strings.Split(v, ",") {
			switch s = strings.TrimSpace(s); s {
			case StatePending, StateFailed:
				want[s] = true
			case "":
			default:
				fields["status"] = "must be pending or failed (delivered notifications are removed)"
			}
		}
	}
	limit := defaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			fields["limit"] = "must be a number from 1 to " + strconv.Itoa(maxListLimit)
		}
		limit = n
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	sub := strings.TrimPrefix(q.Get("subscription"), "Subscription/")
	res := q.Get("resource")
	out := notificationList{Counts: map[string]int{StatePending: 0, StateFailed: 0}, Notifications: []Notification{}}
	// The newest limit matches, kept in a ring while scanning in sequence
	// order.
	ring := make([]Notification, 0, limit)
	matched := 0
	err := a.n.st.View(r.Context(), func(tx *store.Tx) error {
		q, err := queued(tx)
		if err != nil {
			return err
		}
		out.Counts[StateQueued] = q
		return scanEntries(tx, func(e *Notification) (bool, error) {
			out.Counts[e.Status]++
			if (len(want) == 0 || want[e.Status]) && (sub == "" || e.Subscription == sub) && (res == "" || e.Resource == res) {
				if len(ring) < limit {
					ring = append(ring, *e)
				} else {
					ring[matched%limit] = *e
				}
				matched++
			}
			return true, nil
		})
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	for i := 1; i <= len(ring); i++ {
		out.Notifications = append(out.Notifications, ring[(matched-i)%len(ring)])
	}
	out.Truncated = matched > limit
	httpapi.WriteJSON(w, http.StatusOK, out)
}
