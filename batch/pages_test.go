package batch

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// relink serves the source's real pages with their next link replaced by
// edit(offset, the page's own absolute URL, its next link), for the pages
// of $everything; every other request passes. It counts the requests per
// absolute URL.
func relink(x *exchange, edit func(offset int, self, next string) string) (func(w http.ResponseWriter, r *http.Request) bool, func(string) int) {
	root := strings.TrimSuffix(x.src.URL, "/fhir")
	var mu sync.Mutex
	hits := map[string]int{}
	fault := func(w http.ResponseWriter, r *http.Request) bool {
		off := offset(r)
		if off < 0 {
			return false
		}
		self := root + r.URL.RequestURI()
		mu.Lock()
		hits[self]++
		mu.Unlock()
		// A query parameter the source does not know is the endless
		// source's page number: it serves the first page again.
		q := r.URL.Query()
		if q.Has("n") {
			q.Del("n")
			r.URL.RawQuery = q.Encode()
		}
		rec := httptest.NewRecorder()
		x.src.fhir.Handler().ServeHTTP(rec, r)
		var b map[string]any
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &b) != nil {
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			return true
		}
		links, _ := b["link"].([]any)
		next := ""
		var kept []any
		for _, l := range links {
			lm := l.(map[string]any)
			if lm["relation"] == "next" {
				next, _ = lm["url"].(string)
				continue
			}
			kept = append(kept, l)
		}
		if n := edit(off, self, next); n != "" {
			kept = append(kept, map[string]any{"relation": "next", "url": n})
		}
		b["link"] = kept
		out, _ := json.Marshal(b)
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write(out)
		return true
	}
	count := func(u string) int {
		mu.Lock()
		defer mu.Unlock()
		return hits[u]
	}
	return fault, count
}

// TestSourcePagesMustEnd holds the rule that a job always ends, whatever a
// source payer's next links do: a link back to a page already read fails
// the job at once, and links that never repeat and never end fail it at
// the ceilings of pages and resources (-batch-max-pages,
// -batch-max-resources). What was written before stays whole.
func TestSourcePagesMustEnd(t *testing.T) {
	// A well-behaved run gives the size of the member's record.
	var pages, resources int
	{
		x := newExchange(t, Config{})
		access, refresh := x.token(t, oidctest.Grant{})
		job := x.tg.waitEnd(x.pid, x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "")))
		if job.BatchStatus != Completed {
			t.Fatalf("plain run: %s %s", job.BatchStatus, job.FailureReason)
		}
		pages = job.Progress.PagesFetched
		for _, n := range job.Progress.ResourcesWritten {
			resources += n
		}
		if pages < 4 {
			t.Fatalf("the member's record is %d pages of 40; the rows below need 4 or more", pages)
		}
	}
	cases := []struct {
		name string
		cfg  Config
		// edit gives the next link of a page; first is the first request.
		edit func(first string) func(offset int, self, next string) string
		// want is in the failure reason ("" for a completed job); repeated
		// is a URL asked for once or, with a prefetch, twice at most.
		want     string
		repeated func(first string) string
		pages    int // pagesFetched, 0: any
	}{
		{name: "a next link to the page itself", want: "leads back to page 3, already read",
			edit: func(string) func(int, string, string) string {
				return func(off int, self, next string) string {
					if off == 40 {
						return self
					}
					return next
				}
			}, pages: 3},
		{name: "the same link with a fragment", want: "leads back to page 3, already read",
			edit: func(string) func(int, string, string) string {
				return func(off int, self, next string) string {
					if off == 40 {
						return self + "#again"
					}
					return next
				}
			}, pages: 3},
		// Links naming the same page otherwise: a search's parameters in
		// another order, other percent-encoding, the host in capitals, the
		// default port (RFC 3986 6.2.2, 6.2.3; http.html#search).
		{name: "the same link with its query parameters in another order", want: "leads back to page 4, already read",
			edit: func(string) func(int, string, string) string {
				return func(off int, self, next string) string {
					switch {
					case off == 40 && strings.Contains(self, "&n=1"):
						// page 4 (page 3 again, one parameter more) links
						// to itself with its parameters reversed
						path, query, _ := strings.Cut(self, "?")
						params := strings.Split(query, "&")
						slices.Reverse(params)
						return path + "?" + strings.Join(params, "&")
					case off == 40:
						return self + "&n=1"
					}
					return next
				}
			}, pages: 4},
		{name: "the same link with other percent-encoding", want: "leads back to page 3, already read",
			edit: func(string) func(int, string, string) string {
				return func(off int, self, next string) string {
					if off == 40 {
						u := strings.Replace(self, "$everything", "%24everything", 1)
						return strings.Replace(u, "_count=", "%5Fcount=", 1)
					}
					return next
				}
			}, pages: 3},
		{name: "the same link with the host in capitals and the default port", want: "leads back to page 3, already read",
			edit: func(string) func(int, string, string) string {
				return func(off int, self, next string) string {
					if off == 40 {
						return strings.Replace(self, "http://127.0.0.1:", "HTTP://127.0.0.1:", 1)
					}
					return next
				}
			}, pages: 3},
		{name: "a next link back to the first request", want: "leads back to page 2, already read",
			edit: func(first string) func(int, string, string) string {
				return func(off int, self, next string) string {
					if off == 80 {
						return first
					}
					return next
				}
			},
			repeated: func(first string) string { return first }, pages: 4},
		{name: "a relative next link back to the first request", want: "leads back to page 2, already read",
			edit: func(first string) func(int, string, string) string {
				return func(off int, self, next string) string {
					if off == 80 {
						return first[strings.Index(first, "/fhir/"):]
					}
					return next
				}
			},
			repeated: func(first string) string { return first }, pages: 4},
		{name: "a cycle of two pages", want: "leads back to page 3, already read",
			edit: func(first string) func(int, string, string) string {
				var second string
				return func(off int, self, next string) string {
					switch off {
					case 0:
						second = next
					case 80:
						return second
					}
					return next
				}
			}, pages: 4},
		{name: "links that never end stop at the page ceiling", cfg: Config{MaxPages: 5},
			want: "went on past 5 pages, the most one job reads (-batch-max-pages)",
			edit: func(first string) func(int, string, string) string {
				n := 0
				return func(off int, self, next string) string {
					n++
					return first + "&n=" + strconv.Itoa(n)
				}
			}, pages: 5},
		{name: "links that never end stop at the resource ceiling", cfg: Config{MaxResources: 100},
			want: "more than 100 resources, the most one job reads (-batch-max-resources): 81 were written from 3 pages, and page 4 with 40 more was not",
			edit: func(first string) func(int, string, string) string {
				n := 0
				return func(off int, self, next string) string {
					n++
					return first + "&n=" + strconv.Itoa(n)
				}
			}, pages: 3},
		{name: "a source within both ceilings, exactly, completes", cfg: Config{MaxPages: pages, MaxResources: resources},
			edit: func(string) func(int, string, string) string {
				return func(off int, self, next string) string { return next }
			}, pages: pages},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.MaxRetries, c.cfg.RetryBase = 1, time.Millisecond
			x := newExchange(t, c.cfg)
			first := x.src.URL + "/" + x.everything(40)
			fault, hits := relink(x, c.edit(first))
			x.src.setFault(fault)
			access, refresh := x.token(t, oidctest.Grant{})
			job := x.tg.waitEnd(x.pid, x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "")))
			if c.want == "" {
				if job.BatchStatus != Completed {
					t.Fatalf("job %s: %q", job.BatchStatus, job.FailureReason)
				}
			} else if job.BatchStatus != Failed || !strings.Contains(job.FailureReason, c.want) {
				t.Fatalf("job %s: %q, want a failure saying %q", job.BatchStatus, job.FailureReason, c.want)
			}
			if c.pages > 0 && job.Progress.PagesFetched != c.pages {
				t.Errorf("%d pages written, want %d", job.Progress.PagesFetched, c.pages)
			}
			total := 0
			for _, n := range job.Progress.ResourcesWritten {
				total += n
			}
			if max := x.tg.runner.cfg.MaxResources; total > max {
				t.Errorf("%d resources written, past the ceiling %d", total, max)
			}
			if c.repeated != nil {
				if n := hits(c.repeated(first)); n > 2 {
					t.Errorf("%s asked for %d times", c.repeated(first), n)
				}
			}
			x.checkIntact(t, job, 2)
		})
	}
}
