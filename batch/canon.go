package batch

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// refFunc maps a Reference.reference value to the value to store, and says
// whether it changed.
type refFunc func(ref string) (string, bool)

// canonical returns a resource's JSON as it is stored from a source payer:
// compact, resourceType, id and meta first and every other member in its
// order, with
//
//   - id replaced by localID;
//   - meta without versionId and lastUpdated (the store sets them) and with
//     source set to source;
//   - every string value of a member named "reference" (Reference.reference)
//     passed through refs;
//   - one spelling per string ("<" and "\u003c" are the same JSON): only
//     the quote, the backslash and control characters escaped, as jsontext
//     writes them, so that equal content gives equal bytes whichever way
//     the source encoded it. Numbers are kept as written.
//
// Its output is what the store keeps apart from meta.versionId and
// meta.lastUpdated, so equal outputs mean equal stored content. raw must be
// a JSON object (the decoder has already checked it).
func canonical(raw []byte, localID, source string, refs refFunc) ([]byte, error) {
	type member struct {
		key string
		val []byte // a slice of raw
	}
	var rt, meta []byte
	var rest []member
	r := readJSON(raw, lenient)
	defer r.release()
	if r.dec.PeekKind() != '{' {
		return nil, fmt.Errorf("a resource must be a JSON object")
	}
	err := r.members(func(key string) error {
		val, err := r.raw(raw)
		switch key {
		case "resourceType":
			rt = val
		case "id":
		case "meta":
			meta = val
		default:
			rest = append(rest, member{key, val})
		}
		return err
	})
	if err == nil {
		err = r.end()
	}
	if err != nil {
		return nil, fmt.Errorf("malformed JSON: %w", err)
	}
	if rt == nil {
		return nil, fmt.Errorf("the resource has no resourceType")
	}

	w := writeJSON(len(raw) + len(source) + 64)
	defer w.release()
	e := &w.enc
	put := func(t jsontext.Token) {
		if err == nil {
			err = e.WriteToken(t)
		}
	}
	put(jsontext.BeginObject)
	put(jsontext.String("resourceType"))
	if err == nil {
		err = e.WriteValue(rt)
	}
	put(jsontext.String("id"))
	put(jsontext.String(localID))
	put(jsontext.String("meta"))
	put(jsontext.BeginObject)
	if meta != nil && err == nil {
		mr := readJSON(meta, lenient)
		if mr.dec.PeekKind() != '{' {
			err = fmt.Errorf("meta is not an object")
		} else {
			err = mr.members(func(key string) error {
				val, err := mr.raw(meta)
				if err != nil {
					return err
				}
				switch key {
				case "versionId", "lastUpdated", "source":
					return nil
				}
				if err := e.WriteToken(jsontext.String(key)); err != nil {
					return err
				}
				return w.copy(val, refs)
			})
		}
		mr.release()
	}
	put(jsontext.String("source"))
	put(jsontext.String(source))
	put(jsontext.EndObject)
	for _, m := range rest {
		put(jsontext.String(m.key))
		if err == nil {
			err = w.copy(m.val, refs)
		}
	}
	put(jsontext.EndObject)
	if err != nil {
		return nil, err
	}
	// The encoder ends each top-level value with a newline.
	return bytes.Clone(bytes.TrimSuffix(w.buf.Bytes(), []byte("\n"))), nil
}

// jsonWriter writes one JSON text in the form canonical gives.
type jsonWriter struct {
	buf bytes.Buffer
	enc jsontext.Encoder
	rd  jsonReader // walks values that hold references
}

var jsonWriters = sync.Pool{New: func() any { return new(jsonWriter) }}

func writeJSON(size int) *jsonWriter {
	w := jsonWriters.Get().(*jsonWriter)
	w.buf.Reset()
	w.buf.Grow(size)
	w.enc.Reset(&w.buf, lenient...)
	return w
}

func (w *jsonWriter) release() {
	if w.buf.Cap() > 1<<20 {
		w.buf = bytes.Buffer{} // keep no huge buffer in the pool
	}
	jsonWriters.Put(w)
}

// copy writes the value val, rewriting the references in it. A value that
// cannot hold one ("reference" spelled out or with escapes) is written in
// one call.
func (w *jsonWriter) copy(val []byte, refs refFunc) error {
	if refs == nil || !bytes.Contains(val, []byte("reference")) && !bytes.Contains(val, []byte(`\u`)) {
		return w.enc.WriteValue(val)
	}
	w.rd.buf = *bytes.NewBuffer(val)
	w.rd.dec.Reset(&w.rd.buf, lenient...)
	defer func() {
		w.rd.buf = bytes.Buffer{}
		w.rd.dec.Reset(&w.rd.buf)
	}()
	return w.walk(false, refs)
}

// walk copies the next value token by token; isRef says it is the value of
// a member named "reference".
func (w *jsonWriter) walk(isRef bool, refs refFunc) error {
	d, e := &w.rd.dec, &w.enc
	tok, err := d.ReadToken()
	if err != nil {
		return err
	}
	switch tok.Kind() {
	case '{':
		if err := e.WriteToken(tok); err != nil {
			return err
		}
		for d.PeekKind() != '}' {
			k, err := d.ReadToken()
			if err != nil {
				return err
			}
			ref := k.String() == "reference"
			if err := e.WriteToken(k); err != nil {
				return err
			}
			if err := w.walk(ref, refs); err != nil {
				return err
			}
		}
	case '[':
		if err := e.WriteToken(tok); err != nil {
			return err
		}
		for d.PeekKind() != ']' {
			if err := w.walk(false, refs); err != nil {
				return err
			}
		}
	case '"':
		if isRef {
			if to, changed := refs(tok.String()); changed {
				return e.WriteToken(jsontext.String(to))
			}
		}
		return e.WriteToken(tok)
	default:
		return e.WriteToken(tok)
	}
	// the closing brace or bracket
	if tok, err = d.ReadToken(); err != nil {
		return err
	}
	return e.WriteToken(tok)
}

// rewriteRefs returns the JSON value raw compacted, with every string value
// of a member named "reference" passed through refs, and strings in
// canonical's spelling.
func rewriteRefs(raw []byte, refs refFunc) ([]byte, error) {
	w := writeJSON(len(raw) + 64)
	defer w.release()
	if err := w.copy(raw, refs); err != nil {
		return nil, err
	}
	return bytes.Clone(bytes.TrimSuffix(w.buf.Bytes(), []byte("\n"))), nil
}
