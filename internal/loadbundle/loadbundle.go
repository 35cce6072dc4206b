// Package loadbundle builds the synthetic FHIR Bundles that the load
// command (cmd/p2pload) and the server's benchmarks send, so that both
// measure the same request.
package loadbundle

import (
	"bytes"
	"fmt"
)

// Transaction is a FHIR transaction Bundle (JSON) of n entries: one
// Patient per ten, each followed by nine Observations referring to it by
// urn:uuid; about 650 bytes an entry.
func Transaction(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%10 == 0 {
			fmt.Fprintf(&b, `{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Patient","identifier":[{"system":"urn:tx:member","value":"tx%d"}],"name":[{"family":"Transaction%d","given":["Given%d","Middle"]}],"gender":"female","birthDate":"1970-01-%02d","address":[{"line":["%d Main Street"],"city":"Springfield","state":"MA","postalCode":"01101"}]},"request":{"method":"POST","url":"Patient"}}`,
				i, i, i, i, 1+i%28, i)
			continue
		}
		fmt.Fprintf(&b, `{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"%d-%d","display":"Load test code %d"}]},"subject":{"reference":"urn:uuid:00000000-0000-4000-8000-%012d"},"effectiveDateTime":"2024-%02d-%02dT10:00:00Z","issued":"2024-%02d-%02dT11:00:00Z","valueQuantity":{"value":%d.%d,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"},"note":[{"text":"entry %d of a large transaction"}]},"request":{"method":"POST","url":"Observation"}}`,
			i, 1000+i%500, i%10, i%500, i-i%10, 1+i%12, 1+i%28, 1+i%12, 1+i%28, i%300, i%10, i)
	}
	b.WriteString("]}")
	return b.Bytes()
}
