package fhir

import (
	"context"

	"github.com/p2pserver/p2pserver/fhir/search"
)

// SearchInfo lets middleware that wraps the FHIR handlers (see Server.Use)
// learn which search a searchset page answered, for the first page and for
// the later pages of the same result set alike (whose URLs carry only a
// cursor). Put one in the request context with WithSearchInfo before
// calling the handler, read it once the handler has written its header.
type SearchInfo struct {
	query *search.Query
}

type searchInfoKey struct{}

// WithSearchInfo returns ctx carrying a new, empty SearchInfo, and that
// SearchInfo.
func WithSearchInfo(ctx context.Context) (context.Context, *SearchInfo) {
	si := &SearchInfo{}
	return context.WithValue(ctx, searchInfoKey{}, si), si
}

// Query returns the parsed search whose page the request answered (its
// _include and _revinclude as the server applies them), or nil when the
// answer is not a search page (a read, an operation, an error...). The
// Query must not be changed.
func (si *SearchInfo) Query() *search.Query {
	if si == nil {
		return nil
	}
	return si.query
}

// noteSearch records q in the request's SearchInfo, if it has one.
func noteSearch(ctx context.Context, q *search.Query) {
	if si, _ := ctx.Value(searchInfoKey{}).(*SearchInfo); si != nil {
		si.query = q
	}
}
