package eligibility

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/httpapi"
)

// maxWebhookBody caps a vendor webhook delivery; real ones are a few
// hundred bytes.
const maxWebhookBody = 1 << 20

// Mount registers the /api routes on r, the router mounted at /api:
//
//	POST /webhooks/{vendor}                            vendor webhooks (authenticated per vendor, no admin token)
//	GET  /eligibility/connections                      list datasource connections (admin)
//	POST /eligibility/connections                      connect a datasource (admin)
//	GET  /eligibility/connections/{id}                 one connection, refreshed from the vendor (admin)
//	POST /eligibility/connections/{id}/providers       add a provider NPI to a connection (admin)
//	POST /eligibility/connections/{id}/confirm-2fa     relay a 2FA code for a connection (admin)
func (s *Service) Mount(r chi.Router) {
	r.Post("/webhooks/{vendor}", s.webhook)
	r.With(s.admin).Get("/eligibility/connections", s.listConnections)
	r.With(s.admin).Post("/eligibility/connections", s.connect)
	r.With(s.admin).Get("/eligibility/connections/{id}", s.getConnection)
	r.With(s.admin).Post("/eligibility/connections/{id}/providers", s.addProvider)
	r.With(s.admin).Post("/eligibility/connections/{id}/confirm-2fa", s.connectionConfirm2FA)
}

// webhook authenticates a delivery with the vendor's connector, ignores a
// delivery already processed, and wakes the checks it is about; the
// checks then poll the vendor's API for the result. An unauthenticated
// delivery gets 401 and changes nothing.
func (s *Service) webhook(w http.ResponseWriter, r *http.Request) {
	const op = "eligibility.webhook"
	vendor := chi.URLParam(r, "vendor")
	conn := s.conns[vendor]
	if conn == nil {
		httpapi.WriteError(w, errs.E(op, errs.NotFound, fmt.Sprintf("no eligibility vendor %q is configured", vendor)))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
	if err != nil {
		httpapi.WriteError(w, errs.E(op, errs.TooLarge, "the webhook body is too large"))
		return
	}
	notices, err := conn.Webhook(r.Context(), r.Header, body)
	if err != nil {
		if errs.Is(err, errs.Unauthorized) {
			s.log.Warn("eligibility: webhook refused", "vendor", vendor, "remote", r.RemoteAddr, "err", err)
		}
		httpapi.WriteError(w, err)
		return
	}
	var dup, woken int
	now := s.now().UTC()
	err = s.st.Write(workerContext(r.Context()), func(tx *store.Tx) error {
		dup, woken = 0, 0
		for _, n := range notices {
			if n.DeliveryID != "" {
				k := []byte(vendor + "\x00" + n.DeliveryID)
				if tx.KV(bDeliveries).Get(k) != nil {
					dup++
					continue
				}
				if err := tx.KV(bDeliveries).Put(k, []byte(now.Format(time.RFC3339))); err != nil {
					return err
				}
			}
			if n.ConnectionID != "" && n.Status != "" {
				if err := updateConnectionStatus(tx, n.ConnectionID, n.Status, now); err != nil {
					return err
				}
			}
			ids, err := jobsFor(tx, vendor, n.Ref)
			if err != nil {
				return err
			}
			if len(ids) == 0 && n.Ref != "" && n.RequestID != "" {
				// The vendor names the check by our id: a check still
				// waiting for its create call's answer, or whose create
				// call went unconfirmed, takes the vendor's ref from it.
				adopted, err := adopt(tx, vendor, n.RequestID, n.Ref, now)
				if err != nil {
					return err
				}
				if adopted {
					ids = []string{n.RequestID}
				}
			}
			if len(ids) == 0 && n.Ref != "" {
				// The call that made this ref may not have returned yet
				// (the vendor's webhook overtook its answer): keep the
				// news for the job that records the ref (see record).
				if err := tx.KV(bEarly).Put([]byte(vendor+"\x00"+n.Ref), []byte(now.Format(time.RFC3339))); err != nil {
					return err
				}
			}
			for _, id := range ids {
				j, err := getJob(tx, id)
				if err != nil || j == nil {
					continue
				}
				if j.State == stateRelay {
					continue
				}
				j.wake(now)
				if err := putJob(tx, j); err != nil {
					return err
				}
				woken++
			}
		}
		if woken > 0 {
			tx.AfterCommit(s.poke)
		}
		return nil
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]int{"received": len(notices), "duplicates": dup, "checks": woken})
}

// adopt gives the check reqID, of vendor, the vendor's ref when the check
// has none yet (it was never answered, or its create call went
// unconfirmed) and starts waiting on it. It reports whether it did.
func adopt(tx *store.Tx, vendor, reqID, ref string, now time.Time) (bool, error) {
	j, err := getJob(tx, reqID)
	if err != nil || j == nil || j.Vendor != vendor || j.State != stateSubmit || j.Ref != "" {
		return false, err
	}
	j.Ref, j.WaitRef, j.State = ref, ref, stateWait
	j.Req.Unconfirmed, j.Attempts, j.LastError = time.Time{}, 0, ""
	j.Seq++ // a create call's answer still on its way is not applied over this
	if err := j.index(tx, ref); err != nil {
		return false, err
	}
	return true, putJob(tx, j)
}

// connectionRecord is what the server keeps of a datasource connection.
type connectionRecord struct {
	ID          string    `json:"id"`
	Vendor      string    `json:"vendor"`
	WebsiteID   string    `json:"websiteId"`
	NPIs        []string  `json:"npis"`
	Status      string    `json:"status"`
	Credentials []byte    `json:"credentials,omitempty"` // sealed
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
}

// connectionView is a connection as the API returns it: never the
// credentials, only whether they are stored.
type connectionView struct {
	ID             string    `json:"id"`
	Vendor         string    `json:"vendor"`
	WebsiteID      string    `json:"websiteId"`
	NPIs           []string  `json:"npis"`
	Status         string    `json:"status"`
	HasCredentials bool      `json:"hasCredentials"`
	Created        time.Time `json:"created,omitzero"`
	Updated        time.Time `json:"updated,omitzero"`
}

func (c connectionRecord) view() connectionView {
	npis := c.NPIs
	if npis == nil {
		npis = []string{}
	}
	return connectionView{ID: c.ID, Vendor: c.Vendor, WebsiteID: c.WebsiteID, NPIs: npis, Status: c.Status,
		HasCredentials: len(c.Credentials) > 0, Created: c.Created, Updated: c.Updated}
}

func getConnectionRecord(tx *store.Tx, id string) (*connectionRecord, error) {
	b := tx.KV(bConnections).Get([]byte(id))
	if b == nil {
		return nil, nil
	}
	var c connectionRecord
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, errs.E("eligibility.connection", errs.Internal, err)
	}
	return &c, nil
}

func putConnectionRecord(tx *store.Tx, c *connectionRecord) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return tx.KV(bConnections).Put([]byte(c.ID), b)
}

func updateConnectionStatus(tx *store.Tx, id, status string, now time.Time) error {
	c, err := getConnectionRecord(tx, id)
	if err != nil || c == nil {
		return err
	}
	c.Status, c.Updated = status, now
	return putConnectionRecord(tx, c)
}

// datasources returns the connector managing datasource connections.
func (s *Service) datasources() (Connector, Datasources, error) {
	for _, c := range s.order {
		if d, ok := c.(Datasources); ok {
			return c, d, nil
		}
	}
	return nil, nil, errs.E("eligibility.connections", errs.NotFound, "no configured eligibility vendor manages datasource connections")
}

var npiRE = regexp.MustCompile(`^[0-9]{10}$`)

type connectInput struct {
	WebsiteID   string       `json:"websiteId"`
	Provider    providerIn   `json:"provider"`
	Credentials *Credentials `json:"credentials"`
}

type providerIn struct {
	NPI string `json:"npi"`
}

func (s *Service) connect(w http.ResponseWriter, r *http.Request) {
	const op = "eligibility.connect"
	conn, ds, err := s.datasources()
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var in connectInput
	fields, err := httpapi.DecodeJSONFields(r, httpapi.DefaultMaxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	// A field the body had of the wrong type is reported as such, once.
	need := func(field, msg string, missing bool) {
		_, bad := fields[field]
		_, badParent := fields[strings.Split(field, ".")[0]]
		if missing && !bad && !badParent {
			fields[field] = msg
		}
	}
	need("websiteId", "required: the payer portal's website id (see the vendor's payers query)", strings.TrimSpace(in.WebsiteID) == "")
	need("provider.npi", "required: a 10-digit NPI", !npiRE.MatchString(in.Provider.NPI))
	need("credentials.username", "required", in.Credentials == nil || in.Credentials.Username == "")
	need("credentials.password", "required", in.Credentials == nil || in.Credentials.Password == "")
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	credJSON, _ := json.Marshal(in.Credentials)
	sealed, err := s.cipher.Seal(credJSON)
	if err != nil {
		httpapi.WriteError(w, httpapi.Errorf(http.StatusForbidden, httpapi.CodeForbidden,
			"connections cannot be created: the server has no secret key to encrypt the portal credentials (set -secret-key or P2P_SECRET_KEY)"))
		return
	}
	c, err := ds.Connect(r.Context(), in.WebsiteID, in.Provider.NPI, *in.Credentials)
	if err != nil {
		httpapi.WriteError(w, errs.E(op, err))
		return
	}
	now := s.now().UTC()
	rec := &connectionRecord{ID: c.ID, Vendor: conn.Vendor(), WebsiteID: in.WebsiteID, NPIs: mergeNPIs(c.NPIs, in.Provider.NPI),
		Status: c.Status, Credentials: sealed, Created: now, Updated: now}
	if err := s.st.Write(context.WithoutCancel(r.Context()), func(tx *store.Tx) error { return putConnectionRecord(tx, rec) }); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	w.Header().Set("Location", "/api/eligibility/connections/"+rec.ID)
	httpapi.WriteJSON(w, http.StatusCreated, rec.view())
}

func mergeNPIs(a []string, more ...string) []string {
	set := map[string]bool{}
	var out []string
	for _, n := range append(append([]string{}, a...), more...) {
		if n != "" && !set[n] {
			set[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// listConnections lists the vendor's connections, with what the server
// stored about them (whether credentials are kept). When the vendor cannot
// be reached, the stored records are listed and "stale" is true.
func (s *Service) listConnections(w http.ResponseWriter, r *http.Request) {
	conn, ds, err := s.datasources()
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	stored := map[string]*connectionRecord{}
	err = s.st.View(r.Context(), func(tx *store.Tx) error {
		return tx.KV(bConnections).Scan(nil, func(_, v []byte) (bool, error) {
			var c connectionRecord
			if json.Unmarshal(v, &c) == nil {
				stored[c.ID] = &c
			}
			return true, nil
		})
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	live, lerr := ds.Connections(r.Context())
	out := []connectionView{}
	if lerr == nil {
		for _, c := range live {
			rec := stored[c.ID]
			if rec == nil {
				rec = &connectionRecord{ID: c.ID, Vendor: conn.Vendor(), WebsiteID: c.WebsiteID}
			}
			rec.Status, rec.NPIs = c.Status, mergeNPIs(c.NPIs)
			if c.WebsiteID != "" {
				rec.WebsiteID = c.WebsiteID
			}
			out = append(out, rec.view())
		}
	} else {
		for _, rec := range stored {
			out = append(out, rec.view())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"connections": out, "stale": lerr != nil})
}

// getConnection returns one connection as the vendor reports it now, and
// records its status.
func (s *Service) getConnection(w http.ResponseWriter, r *http.Request) {
	conn, ds, err := s.datasources()
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id := chi.URLParam(r, "id")
	c, err := ds.Connection(r.Context(), id)
	if err != nil {
		httpapi.WriteError(w, errs.E("eligibility.connection", err))
		return
	}
	rec, err := s.saveConnection(r.Context(), conn.Vendor(), c)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, rec.view())
}

func (s *Service) saveConnection(ctx context.Context, vendor string, c Connection) (*connectionRecord, error) {
	var rec *connectionRecord
	now := s.now().UTC()
	err := s.st.Write(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		var err error
		if rec, err = getConnectionRecord(tx, c.ID); err != nil {
			return err
		}
		if rec == nil {
			rec = &connectionRecord{ID: c.ID, Vendor: vendor, Created: now}
		}
		rec.Status, rec.NPIs, rec.Updated = c.Status, mergeNPIs(c.NPIs), now
		if c.WebsiteID != "" {
			rec.WebsiteID = c.WebsiteID
		}
		// Checks waiting on this connection look again.
		ids, err := jobsFor(tx, vendor, c.ID)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if j, err := getJob(tx, id); err == nil && j != nil && j.State != stateRelay {
				j.wake(now)
				if err := putJob(tx, j); err != nil {
					return err
				}
				tx.AfterCommit(s.poke)
			}
		}
		return putConnectionRecord(tx, rec)
	})
	return rec, err
}

func (s *Service) addProvider(w http.ResponseWriter, r *http.Request) {
	conn, ds, err := s.datasources()
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var in providerIn
	fields, err := httpapi.DecodeJSONFields(r, httpapi.DefaultMaxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if _, bad := fields["npi"]; !bad && !npiRE.MatchString(in.NPI) {
		fields["npi"] = "required: a 10-digit NPI"
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	id := chi.URLParam(r, "id")
	if err := ds.AddProvider(r.Context(), id, in.NPI); err != nil {
		httpapi.WriteError(w, errs.E("eligibility.add-provider", err))
		return
	}
	c, err := ds.Connection(r.Context(), id)
	if err != nil {
		httpapi.WriteError(w, errs.E("eligibility.add-provider", err))
		return
	}
	c.NPIs = mergeNPIs(c.NPIs, in.NPI)
	rec, err := s.saveConnection(r.Context(), conn.Vendor(), c)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, rec.view())
}

// connectionConfirm2FA relays a 2FA code for a connection outside any
// check (for example right after connecting); checks waiting on the
// connection go on.
func (s *Service) connectionConfirm2FA(w http.ResponseWriter, r *http.Request) {
	conn, ds, err := s.datasources()
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	tf, ok := conn.(TwoFactor)
	if !ok {
		httpapi.WriteError(w, errs.E("eligibility.confirm-2fa", errs.NotFound, conn.Vendor()+" does not take 2FA codes"))
		return
	}
	var in struct {
		Code string `json:"code"`
	}
	fields, err := httpapi.DecodeJSONFields(r, httpapi.DefaultMaxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if _, bad := fields["code"]; !bad && strings.TrimSpace(in.Code) == "" {
		fields["code"] = "required: the 2FA code"
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	id := chi.URLParam(r, "id")
	res, err := tf.Confirm2FA(r.Context(), id, strings.TrimSpace(in.Code))
	if err != nil {
		httpapi.WriteError(w, errs.E("eligibility.confirm-2fa", err))
		return
	}
	c, err := ds.Connection(r.Context(), id)
	if err != nil {
		c = Connection{ID: id, Status: res.Status}
	}
	rec, err := s.saveConnection(r.Context(), conn.Vendor(), c)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, rec.view())
}
