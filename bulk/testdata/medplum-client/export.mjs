// Drives a Bulk Data export with Medplum's client (MedplumClient.bulkExport:
// kick-off with Prefer: respond-async, polling of the status URL, the
// manifest), then downloads each output file with the access token as
// the manifest requires, and prints a JSON summary on stdout:
// {"manifest": {...}, "files": [{"type", "url", "count", "lines", "ids"}]}.
//
// Environment: P2P_FHIR_BASE (the FHIR base URL), P2P_TOKEN (a bearer
// token), P2P_EXPORT_LEVEL ("" for system, "Patient", "Group/<id>"),
// P2P_EXPORT_TYPES (optional _type).
import { MedplumClient } from '@medplum/core';

const base = new URL(process.env.P2P_FHIR_BASE);
const medplum = new MedplumClient({
  baseUrl: base.origin + '/',
  fhirUrlPath: base.pathname.replace(/^\/+|\/+$/g, ''),
  fetch: (url, options) => fetch(url, options),
});
medplum.setAccessToken(process.env.P2P_TOKEN);

const manifest = await medplum.bulkExport(process.env.P2P_EXPORT_LEVEL || '', process.env.P2P_EXPORT_TYPES || undefined, undefined, {
  pollStatusOnAccepted: true,
  pollStatusPeriod: 100,
});
const files = [];
for (const out of manifest.output ?? []) {
  const resp = await fetch(out.url, { headers: { Authorization: 'Bearer ' + process.env.P2P_TOKEN } });
  if (!resp.ok) {
    throw new Error(`GET ${out.url}: ${resp.status}`);
  }
  const lines = (await resp.text()).split('\n').filter((l) => l.trim() !== '');
  files.push({
    type: out.type,
    url: out.url,
    count: out.count,
    contentType: resp.headers.get('content-type'),
    lines: lines.length,
    ids: lines.map((l) => {
      const r = JSON.parse(l);
      return `${r.resourceType}/${r.id}`;
    }),
  });
}
process.stdout.write(JSON.stringify({ manifest, files }));
