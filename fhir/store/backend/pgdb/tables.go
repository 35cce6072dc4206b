package pgdb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// How the store's buckets map onto tables (see the store's package doc
// for the buckets):
//
//	R:<type>          p2p_resources (type, id), the rows whose head is
//	                  not null: the current version; its record is the
//	                  one in p2p_versions when rec is null
//	H:<type>          p2p_versions (type, id, version): every version
//	X:<type>          p2p_resources (type, id), the rows whose entries
//	                  is not null: a resource's index entries, in the
//	                  row of its current version (a row holds either
//	                  value or both; one holding neither is deleted)
//	I:<type>:<param>  p2p_index (ix, key, id): one row per index entry,
//	                  payload as value, ix the number p2p_search_params
//	                  gives (type, param); the primary key's B-tree
//	                  serves the store's range seeks
//	C, C:<type>       p2p_changes (log, seq): the change logs, global
//	                  (log '') and per type
//	any other         p2p_kv (bucket, key)
//
// Keys and values are the store's: a bucket reads back byte for byte
// what was put, in the byte order of its keys.
type kind int

const (
	kindKV kind = iota
	kindResources
	kindVersions
	kindEntries
	kindSearch
	kindChanges
)

// table says where the bucket name lives.
type table struct {
	kind  kind
	name  string // the bucket name
	typ   string // resource type (all but kindKV; "" for the global change log)
	param string // search parameter (kindSearch)
	ix    int32  // the number of (typ, param) in p2p_search_params (kindSearch), set by the reader
}

func tableOf(name string) table {
	t := table{name: name}
	if name == "C" {
		t.kind = kindChanges
		return t
	}
	if len(name) < 3 || name[1] != ':' {
		return t
	}
	rest := name[2:]
	switch name[0] {
	case 'R':
		t.kind, t.typ = kindResources, rest
	case 'H':
		t.kind, t.typ = kindVersions, rest
	case 'X':
		t.kind, t.typ = kindEntries, rest
	case 'C':
		t.kind, t.typ = kindChanges, rest
	case 'I':
		typ, param, ok := strings.Cut(rest, ":")
		if !ok {
			return t
		}
		t.kind, t.typ, t.param = kindSearch, typ, param
	}
	return t
}

// textOK reports whether b can be a text value: UTF-8 without NUL.
func textOK(b []byte) bool { return utf8.Valid(b) && bytes.IndexByte(b, 0) < 0 }

// splitVersionKey splits a history key, id 0x00 version (8 bytes, big
// endian).
func splitVersionKey(k []byte) (id string, version int64, ok bool) {
	if len(k) < 10 || k[len(k)-9] != 0 || !textOK(k[:len(k)-9]) {
		return "", 0, false
	}
	v := binary.BigEndian.Uint64(k[len(k)-8:])
	if v > math.MaxInt64 {
		return "", 0, false
	}
	return string(k[:len(k)-9]), int64(v), true
}

func versionKey(id string, version int64) []byte {
	k := make([]byte, len(id)+9)
	copy(k, id)
	binary.BigEndian.PutUint64(k[len(id)+1:], uint64(version))
	return k
}

// splitSearchKey splits an index key, entry key 0x00 id, into the entry
// key and the id column's value: the id part's bytes as they are (the
// store's 16-byte form of an id, or an id's text), which bytea orders as
// the key's bytes are ordered.
func splitSearchKey(k []byte) (key, id []byte, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i < 0 {
		return nil, nil, false
	}
	return k[:i], k[i+1:], true
}

// searchKey is the index key of entry key and id column value id.
func searchKey(key, id []byte) []byte {
	k := make([]byte, 0, len(key)+1+len(id))
	k = append(k, key...)
	k = append(k, 0)
	return append(k, id...)
}

func seqKey(seq int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(seq)) }

// bound is where a cursor read starts: the first key after (or before)
// key, key itself included when incl; from the first (last) key when
// none.
type bound struct {
	key  []byte
	incl bool
	none bool
}

// intBound turns a bound on 8-byte big-endian keys into one on their
// integer: the condition "col op value", or all (no condition) or
// nothing (no key can satisfy it).
func intBound(b bound, fwd bool) (op string, v int64, all, nothing bool) {
	s := b.key
	var u uint64
	var exact bool
	switch {
	case len(s) == 8:
		u, exact = binary.BigEndian.Uint64(s), true
	case len(s) < 8:
		var p [8]byte
		copy(p[:], s)
		u = binary.BigEndian.Uint64(p[:])
	default:
		u = binary.BigEndian.Uint64(s[:8])
	}
	// An 8-byte key k compares with s as k with u, except that k = u
	// is below s when s is longer and above it when shorter.
	var strict bool
	if fwd {
		switch {
		case exact:
			strict = !b.incl
		case len(s) > 8:
			strict = true
		}
		if u > math.MaxInt64 || (strict && u == math.MaxInt64) {
			return "", 0, false, true
		}
		if strict {
			return ">", int64(u), false, false
		}
		return ">=", int64(u), false, false
	}
	switch {
	case exact:
		strict = !b.incl
	case len(s) < 8:
		strict = true
	}
	if u > math.MaxInt64 {
		return "", 0, true, false
	}
	if strict {
		return "<", int64(u), false, false
	}
	return "<=", int64(u), false, false
}

// cmpOp is the comparison of a key with a bound in a direction.
func cmpOp(fwd, incl bool) string {
	switch {
	case fwd && incl:
		return ">="
	case fwd:
		return ">"
	case incl:
		return "<="
	default:
		return "<"
	}
}

// currentRec is the SQL of the current record of the p2p_resources row
// r: its rec, else its version's in p2p_versions, read only then
// (coalesce evaluates its arguments in order, up to the first not null;
// a join would probe p2p_versions for every row).
const currentRec = `coalesce(r.rec, (SELECT v.rec FROM p2p_versions v
	WHERE v.type = r.type AND v.id = r.id AND v.version = r.version))`

// fetchSQL returns the query reading up to limit rows of t from b in the
// direction, as (key columns..., value), and its arguments; of a search
// index, none at or after end when end is not nil (other tables leave
// end to the cursor). head reads only a resource's record head (see
// headLen). nothing: no row can match.
func fetchSQL(t table, b bound, end []byte, fwd bool, limit int, head bool) (sql string, args []any, nothing bool, err error) {
	dir := "ASC"
	if !fwd {
		dir = "DESC"
	}
	args = []any{}
	arg := func(v any) string { args = append(args, v); return fmt.Sprintf("$%d", len(args)) }
	var where []string
	textBound := func(col string) error {
		if b.none {
			return nil
		}
		if !textOK(b.key) {
			return fmt.Errorf("seek %q in %s: not a resource id", b.key, t.name)
		}
		where = append(where, col+" "+cmpOp(fwd, b.incl)+" "+arg(string(b.key)))
		return nil
	}
	switch t.kind {
	case kindKV:
		where = append(where, "bucket = "+arg(t.name))
		if !b.none {
			where = append(where, "key "+cmpOp(fwd, b.incl)+" "+arg(b.key))
		}
		sql = "SELECT key, value FROM p2p_kv WHERE " + strings.Join(where, " AND ") + " ORDER BY key " + dir
	case kindResources:
		where = append(where, "r.type = "+arg(t.typ))
		if err := textBound("r.id"); err != nil {
			return "", nil, false, err
		}
		where = append(where, "r.head IS NOT NULL")
		col := currentRec
		if head {
			col = "r.head"
		}
		sql = "SELECT r.id, " + col + " FROM p2p_resources r WHERE " + strings.Join(where, " AND ") + " ORDER BY r.id " + dir
	case kindEntries:
		where = append(where, "type = "+arg(t.typ))
		if err := textBound("id"); err != nil {
			return "", nil, false, err
		}
		where = append(where, "entries IS NOT NULL")
		sql = "SELECT id, entries FROM p2p_resources WHERE " + strings.Join(where, " AND ") + " ORDER BY id " + dir
	case kindVersions:
		where = append(where, "type = "+arg(t.typ))
		if !b.none {
			i := bytes.IndexByte(b.key, 0)
			if i < 0 {
				// No version part: ids from the key on (forward) or
				// strictly before it (backward), whatever incl says.
				if !textOK(b.key) {
					return "", nil, false, fmt.Errorf("seek %q in %s: not a history key", b.key, t.name)
				}
				op := ">="
				if !fwd {
					op = "<"
				}
				where = append(where, "id "+op+" "+arg(string(b.key)))
			} else {
				id := b.key[:i]
				if !textOK(id) {
					return "", nil, false, fmt.Errorf("seek %q in %s: not a history key", b.key, t.name)
				}
				op, v, all, none := intBound(bound{key: b.key[i+1:], incl: b.incl}, fwd)
				idOp := ">"
				if !fwd {
					idOp = "<"
				}
				switch {
				case all:
					where = append(where, "id "+idOp+"= "+arg(string(id)))
				case none:
					where = append(where, "id "+idOp+" "+arg(string(id)))
				default:
					where = append(where, "(id, version) "+op+" ("+arg(string(id))+", "+arg(v)+")")
				}
			}
		}
		sql = "SELECT id, version, rec FROM p2p_versions WHERE " + strings.Join(where, " AND ") +
			" ORDER BY id " + dir + ", version " + dir
	case kindSearch:
		where = append(where, "ix = "+arg(t.ix))
		if !b.none {
			i := bytes.IndexByte(b.key, 0)
			if i < 0 {
				op := ">="
				if !fwd {
					op = "<"
				}
				where = append(where, "key "+op+" "+arg(b.key))
			} else {
				where = append(where, "(key, id) "+cmpOp(fwd, b.incl)+" ("+arg(b.key[:i])+", "+arg(b.key[i+1:])+")")
			}
		}
		if end != nil {
			if bytes.IndexByte(end, 0) < 0 {
				// key 0x00 id sorts before end exactly when key does.
				where = append(where, "key < "+arg(end))
			} else if k, id, ok := splitSearchKey(end); ok {
				where = append(where, "(key, id) < ("+arg(k)+", "+arg(id)+")")
			}
		}
		sql = "SELECT key, id, payload FROM p2p_index WHERE " + strings.Join(where, " AND ") +
			" ORDER BY key " + dir + ", id " + dir
	case kindChanges:
		where = append(where, "log = "+arg(t.typ))
		if !b.none {
			op, v, all, none := intBound(b, fwd)
			if none {
				return "", nil, true, nil
			}
			if !all {
				where = append(where, "seq "+op+" "+arg(v))
			}
		}
		sql = "SELECT seq, value FROM p2p_changes WHERE " + strings.Join(where, " AND ") + " ORDER BY seq " + dir
	}
	sql += " LIMIT " + arg(limit)
	return sql, args, false, nil
}
