package fhir

import (
	"fmt"
	"slices"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// included gathers a page's _include and _revinclude resources (FHIR R4
// search.html#include): those of the matches ids (of type typ), then, for
// the :iterate ones, those of the resources included so far, round after
// round until a round adds nothing new. Only what the request may see is
// included or followed further (sees decides). It stops at s.cfg.MaxIncluded resources
// and then reports true.
func (s *Server) included(tx *store.Tx, typ string, ids []string, q *search.Query, sees func(*store.Version) bool) ([]*store.Version, bool, error) {
	if len(q.Include) == 0 && len(q.RevInclude) == 0 {
		return nil, false, nil
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		seen[typ+"/"+id] = true
	}
	var out []*store.Version
	full := false
	frontier := map[string][]string{typ: ids}
	for round := 0; len(frontier) > 0 && !full; round++ {
		next := map[string][]string{}
		add := func(vs []*store.Version) {
			// In one order whatever the order of a resource's index
			// entries: answers must not vary from server to server.
			slices.SortStableFunc(vs, func(a, b *store.Version) int {
				return strings.Compare(a.Type+"/"+a.ID, b.Type+"/"+b.ID)
			})
			for _, v := range vs {
				k := v.Type + "/" + v.ID
				if seen[k] || full {
					continue
				}
				seen[k] = true
				if !sees(v) {
					continue // never include, nor follow, what the request may not see
				}
				if len(out) >= s.cfg.MaxIncluded {
					full = true
					return
				}
				out = append(out, v)
				next[v.Type] = append(next[v.Type], v.ID)
			}
		}
		types := make([]string, 0, len(frontier))
		for t := range frontier {
			types = append(types, t)
		}
		slices.Sort(types)
		for _, t := range types {
			if incs := includesFor(q.Include, round, t, false); len(incs) > 0 {
				vs, err := tx.Included(t, frontier[t], incs)
				if err != nil {
					return nil, false, err
				}
				add(vs)
			}
			if revs := includesFor(q.RevInclude, round, t, true); len(revs) > 0 {
				vs, err := tx.RevIncluded(t, frontier[t], revs)
				if err != nil {
					return nil, false, err
				}
				add(vs)
			}
		}
		frontier = next
	}
	return out, full, nil
}

// includesFor picks the includes that apply in round (0: to the matches)
// to resources of type t: every one in round 0 (an _include names the
// searched type), the :iterate ones after. _revinclude names the type that
// refers, not t, so only its target type is checked (by RevIncluded).
func includesFor(incs []search.Include, round int, t string, rev bool) []search.Include {
	var out []search.Include
	for _, inc := range incs {
		if round > 0 && !inc.Iterate {
			continue
		}
		if !rev && inc.Type != t && inc.Type != "*" {
			continue
		}
		out = append(out, inc)
	}
	return out
}

// includeLimitOutcome is the outcome entry of a page whose includes were
// cut at the limit.
func includeLimitOutcome(limit int) *OperationOutcome {
	return &OperationOutcome{ResourceType: "OperationOutcome", Issue: []OOIssue{{
		Severity: "warning", Code: "incomplete",
		Diagnostics: fmt.Sprintf("_include/_revinclude stopped at %d included resources on this page (the server's limit); "+
			"resources they name beyond it are left out: ask for smaller pages (_count) or fewer includes", limit),
	}}}
}
