package main

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
)

// Element flags written to element-flags.json: for every schema definition
// (resource, data type, backbone element), the properties that are in the
// summary (ElementDefinition.isSummary) or mandatory (min >= 1), as a bit
// set. The R4 JSON Schema says neither, so they come from the
// StructureDefinitions (profiles-resources.json.gz, profiles-types.json.gz).
const (
	flagSummary   = 1
	flagMandatory = 2
)

// inherited are the definitions of BackboneElement's own members.
var inherited = map[string]sdElement{
	"id":                {Path: "BackboneElement.id"},
	"extension":         {Path: "BackboneElement.extension"},
	"modifierExtension": {Path: "BackboneElement.modifierExtension", IsSummary: true},
}

type sdElement struct {
	Path             string `json:"path"`
	Min              int    `json:"min"`
	IsSummary        bool   `json:"isSummary"`
	ContentReference string `json:"contentReference"`
}

// readProfiles reads the StructureDefinitions' snapshot elements by path.
func readProfiles(paths ...string) (map[string]sdElement, map[string]bool, error) {
	elems := map[string]sdElement{}
	roots := map[string]bool{}
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		var bundle struct {
			Entry []struct {
				Resource struct {
					ResourceType string `json:"resourceType"`
					ID           string `json:"id"`
					Kind         string `json:"kind"`
					Derivation   string `json:"derivation"`
					Snapshot     struct {
						Element []sdElement `json:"element"`
					} `json:"snapshot"`
				} `json:"resource"`
			} `json:"entry"`
		}
		err = json.NewDecoder(zr).Decode(&bundle)
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		for _, e := range bundle.Entry {
			sd := e.Resource
			if sd.ResourceType != "StructureDefinition" || sd.Derivation == "constraint" ||
				(sd.Kind != "resource" && sd.Kind != "complex-type") {
				continue
			}
			roots[sd.ID] = true
			for _, el := range sd.Snapshot.Element {
				elems[el.Path] = el
			}
		}
		log.Printf("%s: %d element definitions so far", filepath.Base(path), len(elems))
	}
	return elems, roots, nil
}

// elementFlags maps every definition of the trimmed schema to the flags of
// its properties. A definition that is a resource or data type is found by
// its name; a backbone element by the path of the property that reaches
// it (following contentReference). Properties without a flag are left out.
func elementFlags(in string, schema, choices *object) (*object, error) {
	elems, roots, err := readProfiles(filepath.Join(in, "profiles-types.json.gz"), filepath.Join(in, "profiles-resources.json.gz"))
	if err != nil {
		return nil, err
	}
	defs := schema.get("definitions").(*object)
	paths := map[string]string{} // definition -> element path
	var assign func(def, path string) error
	assign = func(def, path string) error {
		if old, ok := paths[def]; ok {
			if old != path {
				return fmt.Errorf("definition %s is reached as %s and as %s", def, old, path)
			}
			return nil
		}
		paths[def] = path
		d, _ := defs.get(def).(*object)
		props, _ := d.get("properties").(*object)
		for _, pn := range props.keys {
			p, _ := props.get(pn).(*object)
			if items, ok := p.get("items").(*object); ok {
				p = items
			}
			ref, _ := p.get("$ref").(string)
			ref = strings.TrimPrefix(ref, "#/definitions/")
			if ref == "" || roots[ref] || ref == "ResourceList" || strings.HasPrefix(pn, "_") {
				continue
			}
			if sub, ok := defs.get(ref).(*object); !ok || sub.get("properties") == nil {
				continue
			}
			el := elems[path+"."+pn]
			next := path + "." + pn
			if el.ContentReference != "" {
				next = strings.TrimPrefix(el.ContentReference, "#")
			}
			if err := assign(ref, next); err != nil {
				return err
			}
		}
		return nil
	}
	for _, name := range defs.keys {
		if roots[name] {
			if err := assign(name, name); err != nil {
				return nil, err
			}
		}
	}
	out := &object{}
	n := 0
	var missing []string
	for _, name := range defs.keys {
		path, ok := paths[name]
		if !ok {
			continue
		}
		d := defs.get(name).(*object)
		props, _ := d.get("properties").(*object)
		base := map[string]string{} // concrete choice property -> base name
		if g, ok := choices.get(name).(*object); ok {
			for _, b := range g.keys {
				for _, c := range g.get(b).([]any) {
					base[c.(string)] = b + "[x]"
				}
			}
		}
		flags := &object{}
		for _, pn := range props.keys {
			if strings.HasPrefix(pn, "_") || pn == "resourceType" {
				continue
			}
			en := pn
			if b, ok := base[pn]; ok {
				en = b
			}
			el, ok := elems[path+"."+en]
			if !ok {
				// The R4 schema gives Element-based parts of data types
				// (Timing.repeat) the members of a BackboneElement.
				el, ok = inherited[pn]
			}
			if !ok {
				el, ok = elems[path+"."+pn]
			}
			if !ok {
				// The redistribution's StructureDefinitions of a few
				// resources are not R4's (EvidenceVariable): no flags.
				missing = append(missing, path+"."+en)
				continue
			}
			f := 0
			if el.IsSummary {
				f |= flagSummary
			}
			if el.Min >= 1 {
				f |= flagMandatory
			}
			if f != 0 {
				flags.set(pn, f)
				n++
			}
		}
		if len(flags.keys) > 0 {
			out.set(name, flags)
		}
	}
	log.Printf("element flags: %d properties of %d definitions; %d properties without an R4 element definition (%s ...)",
		n, len(out.keys), len(missing), strings.Join(missing[:min(len(missing), 8)], ", "))
	return out, nil
}
