package auth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/internal/httpapi"
)

// MountAPI registers the backend client registry on r, the router
// mounted at /api (httpapi.NewRouter); every route needs the admin role:
//
//	POST   /backend_clients             register a client: 201 with its clientId
//	GET    /backend_clients             list the clients
//	GET    /backend_clients/{clientId}  one client
//	PUT    /backend_clients/{clientId}  replace its name, keys, scopes, organization
//	DELETE /backend_clients/{clientId}  remove it: its tokens stop working at once
//
// Bodies are {"name", "jwks": {"keys": [...]} or "jwksUrl", "scopes",
// "organizationId"}; errors are the /api JSON shape, one field each.
func (s *Server) MountAPI(r chi.Router) {
	admin := s.cfg.Admin
	if admin == nil {
		panic("auth: MountAPI without an admin guard")
	}
	r.With(admin).Post("/backend_clients", s.createClient)
	r.With(admin).Get("/backend_clients", s.listClients)
	r.With(admin).Get("/backend_clients/{clientId}", s.getClient)
	r.With(admin).Put("/backend_clients/{clientId}", s.replaceClient)
	r.With(admin).Delete("/backend_clients/{clientId}", s.deleteClient)
}

// clientInput is the body of POST and PUT. clientId, created and updated
// are accepted so that a client read with GET can be sent back with PUT.
type clientInput struct {
	ClientID       *string         `json:"clientId"`
	Name           string          `json:"name"`
	JWKS           json.RawMessage `json:"jwks"`
	JWKSURL        string          `json:"jwksUrl"`
	Scopes         []string        `json:"scopes"`
	OrganizationID string          `json:"organizationId"`
	Created        *time.Time      `json:"created"`
	Updated        *time.Time      `json:"updated"`
}

// decode reads and checks a body; fields holds every problem.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, self string) (Client, bool) {
	var in clientInput
	fields, err := httpapi.DecodeJSONFields(r, s.cfg.MaxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return Client{}, false
	}
	switch {
	case self == "" && in.ClientID != nil:
		fields["clientId"] = "is assigned by the server; leave it out"
	case self != "" && in.ClientID != nil && *in.ClientID != self:
		fields["clientId"] = fmt.Sprintf("must be %q, the clientId in the URL, or left out", self)
	}
	c := Client{ClientID: self, Name: in.Name, JWKS: in.JWKS, JWKSURL: strings.TrimSpace(in.JWKSURL), Scopes: in.Scopes, OrganizationID: in.OrganizationID}
	for _, is := range c.Problems() {
		if _, ok := fields[is.Path]; !ok {
			fields[is.Path] = is.Message
		}
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return Client{}, false
	}
	return c, true
}

func (s *Server) createClient(w http.ResponseWriter, r *http.Request) {
	c, ok := s.decode(w, r, "")
	if !ok {
		return
	}
	c, err := s.clients.create(r.Context(), c)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	s.log.Info("auth: backend client registered", "client_id", c.ClientID, "name", c.Name, "scopes", strings.Join(c.Scopes, " "), "jwks_url", c.JWKSURL, "role", role(r))
	w.Header().Set("Location", strings.TrimSuffix(r.URL.Path, "/")+"/"+c.ClientID)
	httpapi.WriteJSON(w, http.StatusCreated, c)
}

func (s *Server) listClients(w http.ResponseWriter, r *http.Request) {
	all, err := s.clients.list(r.Context())
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if all == nil {
		all = []Client{}
	}
	httpapi.WriteJSON(w, http.StatusOK, struct {
		Clients []Client `json:"clients"`
	}{all})
}

func (s *Server) getClient(w http.ResponseWriter, r *http.Request) {
	c, err := s.clients.get(r.Context(), chi.URLParam(r, "clientId"))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, c)
}

func (s *Server) replaceClient(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "clientId")
	old, err := s.clients.get(r.Context(), id)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	c, ok := s.decode(w, r, id)
	if !ok {
		return
	}
	c, err = s.clients.replace(r.Context(), c)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if old.JWKSURL != "" {
		s.jwks.forget(old.JWKSURL)
	}
	s.log.Info("auth: backend client replaced", "client_id", c.ClientID, "name", c.Name, "scopes", strings.Join(c.Scopes, " "), "jwks_url", c.JWKSURL, "role", role(r))
	httpapi.WriteJSON(w, http.StatusOK, c)
}

func (s *Server) deleteClient(w http.ResponseWriter, r *http.Request) {
	old, err := s.clients.delete(r.Context(), chi.URLParam(r, "clientId"))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if old.JWKSURL != "" {
		s.jwks.forget(old.JWKSURL)
	}
	s.log.Info("auth: backend client deleted; its tokens no longer work", "client_id", old.ClientID, "name", old.Name, "role", role(r))
	w.WriteHeader(http.StatusNoContent)
}

func role(r *http.Request) string {
	ro, _ := httpapi.RoleFromContext(r.Context())
	return ro
}

// Disabled stands in for a Server when Backend Services cannot run (the
// server has no -secret-key to seal its signing keys): its routes answer
// with Reason instead of a bare 404.
type Disabled struct{ Reason string }

// Handler answers every /auth route with an OAuth error saying why.
func (d Disabled) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		oauthError(w, http.StatusNotFound, "invalid_request", d.Reason)
	})
}

// MountAPI answers the /api/backend_clients routes with 403 and Reason.
func (d Disabled) MountAPI(r chi.Router) {
	refuse := func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteError(w, httpapi.Errorf(http.StatusForbidden, httpapi.CodeForbidden, "%s", d.Reason))
	}
	r.Get("/backend_clients", refuse)
	r.Post("/backend_clients", refuse)
	r.Get("/backend_clients/{clientId}", refuse)
	r.Put("/backend_clients/{clientId}", refuse)
	r.Delete("/backend_clients/{clientId}", refuse)
}
