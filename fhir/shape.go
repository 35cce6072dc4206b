package fhir

import (
	"bytes"
	"encoding/json"
	"slices"

	"github.com/p2pserver/p2pserver/fhir/fhirjson"
)

// subsetted is the meta.tag FHIR requires on a resource cut down by
// _elements or _summary.
var subsetted = json.RawMessage(`{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"Resource encoded in summary mode"}`)

// shapeResource applies _summary (FHIR R4 search.html#summary) or _elements
// (#elements) to a stored resource of type typ:
//
//   - true: the elements the R4 definitions mark isSummary, at every level
//     (resource, backbone elements, data types; an extension is kept or
//     left out whole), and the mandatory ones (min >= 1);
//   - text: id, meta, text and the mandatory top-level elements;
//   - data: everything but text;
//   - _elements: the named top-level elements (a choice by its base name or
//     a concrete one), id, meta and the mandatory top-level elements.
//
// "" and false with no elements return body as it is. A cut-down resource
// gets the SUBSETTED tag in meta.
func (s *Server) shapeResource(body []byte, typ, summary string, elements []string) (json.RawMessage, error) {
	if len(elements) == 0 && summary != "true" && summary != "text" && summary != "data" {
		return body, nil
	}
	ms, err := fhirjson.Members(body)
	if err != nil {
		return nil, err
	}
	keep := func(k string) bool {
		base := k
		if k[0] == '_' {
			base = k[1:]
		}
		switch base {
		case "resourceType", "id", "meta":
			return true
		}
		switch summary {
		case "data":
			return base != "text"
		case "text":
			return base == "text" || s.model.Mandatory(typ, base)
		case "true":
			return s.model.InSummary(typ, base) || s.model.Mandatory(typ, base)
		}
		if s.model.Mandatory(typ, base) || slices.Contains(elements, base) {
			return true
		}
		for _, e := range elements {
			for _, c := range s.model.ChoiceElements(typ, e) {
				if c.Name == base {
					return true
				}
			}
		}
		return false
	}
	out := make([]fhirjson.Member, 0, len(ms)+1)
	hasMeta := false
	for _, m := range ms {
		if !keep(m.Key) {
			continue
		}
		val := m.Raw
		switch {
		case m.Key == "meta":
			hasMeta = true
			if val, err = addTag(m.Raw); err != nil {
				return nil, err
			}
		case summary == "true" && m.Key[0] != '_':
			if el, ok := s.model.Element(typ, m.Key); ok && s.summarizable(el.Type) {
				var empty bool
				if val, empty = s.summarize(m.Raw, el.Type); empty {
					continue
				}
			}
		}
		out = append(out, fhirjson.Member{Key: m.Key, Raw: val})
	}
	if !hasMeta {
		meta, _ := addTag(json.RawMessage(`{}`))
		at := slices.IndexFunc(out, func(m fhirjson.Member) bool { return m.Key == "id" }) + 1
		if at == 0 {
			at = slices.IndexFunc(out, func(m fhirjson.Member) bool { return m.Key == "resourceType" }) + 1
		}
		out = slices.Insert(out, at, fhirjson.Member{Key: "meta", Raw: meta})
	}
	return fhirjson.Object(out)
}

// summarizable reports whether values of type typ are cut down, member by
// member, in summary mode: data types and backbone elements, but not an
// Extension (its url is mandatory and its value is not in the summary, so
// it is kept or dropped whole) nor a resource.
func (s *Server) summarizable(typ string) bool {
	switch typ {
	case "Extension", "Resource", "Element", "Narrative":
		return false
	}
	return s.model.IsComplex(typ)
}

// summarize keeps, in raw (an object or an array of objects of type typ),
// the members in the summary or mandatory. It reports whether nothing is
// left.
func (s *Server) summarize(raw []byte, typ string) ([]byte, bool) {
	i := skipWS(raw, 0)
	if i >= len(raw) {
		return raw, false
	}
	switch raw[i] {
	case '[':
		var b bytes.Buffer
		b.WriteByte('[')
		n := 0
		i = skipWS(raw, i+1)
		for i < len(raw) && raw[i] != ']' {
			end := jsonValueEnd(raw, i)
			if v, empty := s.summarize(raw[i:end], typ); !empty {
				if n > 0 {
					b.WriteByte(',')
				}
				b.Write(v)
				n++
			}
			i = skipWS(raw, end)
			if i < len(raw) && raw[i] == ',' {
				i = skipWS(raw, i+1)
			}
		}
		b.WriteByte(']')
		return b.Bytes(), n == 0
	case '{':
		ms, err := fhirjson.Members(raw)
		if err != nil {
			return raw, false
		}
		out := ms[:0]
		for _, m := range ms {
			base := m.Key
			if base[0] == '_' {
				base = base[1:]
			}
			if !s.model.InSummary(typ, base) && !s.model.Mandatory(typ, base) {
				continue
			}
			if el, ok := s.model.Element(typ, m.Key); ok && m.Key[0] != '_' && s.summarizable(el.Type) {
				v, empty := s.summarize(m.Raw, el.Type)
				if empty {
					continue
				}
				m.Raw = v
			}
			out = append(out, m)
		}
		if len(out) == 0 {
			return nil, true
		}
		b, err := fhirjson.Object(out)
		if err != nil {
			return raw, false
		}
		return b, false
	}
	return raw, false
}

func addTag(meta json.RawMessage) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(meta, &m); err != nil {
		return nil, err
	}
	var tags []json.RawMessage
	if t, ok := m["tag"]; ok {
		if err := json.Unmarshal(t, &tags); err != nil {
			return nil, err
		}
	}
	tags = append(tags, subsetted)
	enc, _ := json.Marshal(tags)
	m["tag"] = enc
	return json.Marshal(m)
}
