package fhir

import (
	"context"

	"github.com/p2pserver/p2pserver/fhir/authz"
)

// Access is who makes a request, with the rights the policy weighs (see
// authz.Principal). Middleware that authenticates a request (see
// Server.Use) puts one in the request context with WithAccess; a request
// without one is unrestricted, as in a server run open for local use.
type Access = authz.Principal

// WithAccess returns ctx carrying a.
func WithAccess(ctx context.Context, a *Access) context.Context {
	return authz.WithPrincipal(ctx, a)
}

// AccessFrom returns the Access of ctx, nil when unrestricted.
func AccessFrom(ctx context.Context) *Access { return authz.FromContext(ctx) }

// Policy returns the access policy every interaction of the server asks;
// domain packages ask it too for what they serve on a request's behalf.
func (s *Server) Policy() *authz.Policy { return s.policy }
