package addpayer

import (
	"bytes"
	"encoding/json"
	"fmt"
)

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

// hasCoding reports whether a CodeableConcept has a coding system|code.
func hasCoding(concept any, system, code string) bool {
	c, _ := concept.(map[string]any)
	for _, raw := range list(c["coding"]) {
		cd, _ := raw.(map[string]any)
		if cd["system"] == system && cd["code"] == code {
			return true
		}
	}
	return false
}

// conceptText returns a CodeableConcept's text, or its first coding's
// display.
func conceptText(concept any) string {
	c, _ := concept.(map[string]any)
	if t, _ := c["text"].(string); t != "" {
		return t
	}
	for _, raw := range list(c["coding"]) {
		cd, _ := raw.(map[string]any)
		if d, _ := cd["display"].(string); d != "" {
			return d
		}
	}
	return ""
}

// refOf returns Reference.reference.
func refOf(v any) string {
	r, _ := v.(map[string]any)
	s, _ := r["reference"].(string)
	return s
}

func decode(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	return m, nil
}
