package pgdb

import (
	"fmt"
	"testing"
)

// TestJoinedChunkIsPutInOrder: the rows of a joined read (see joinSQL),
// which the statement does not order, are put in key order with their
// values, whatever order they came in.
func TestJoinedChunkIsPutInOrder(t *testing.T) {
	for _, order := range [][]string{{"a", "b", "c"}, {"c", "a", "b"}, {"b", "c", "a"}, {"c", "b", "a"}} {
		c := &cursor{joining: &joinSpec{}, limit: 3}
		for _, k := range order {
			c.db.keys = append(c.db.keys, []byte(k))
			c.db.vals = append(c.db.vals, []byte("v"+k))
		}
		c.done()
		if got := fmt.Sprintf("%s %s", c.db.keys, c.db.vals); got != "[a b c] [va vb vc]" {
			t.Errorf("rows %v: the chunk holds %s", order, got)
		}
		if !c.db.more {
			t.Errorf("rows %v: a full chunk says no row follows", order)
		}
	}
}
