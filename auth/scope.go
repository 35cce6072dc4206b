package auth

import (
	"slices"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/smart"
)

// Intersect is the scope a backend client is granted when it asks for
// asked (space-separated) and is registered for registered: for every
// system/ resource scope asked and every registered one, what both allow
// (SMART Backend Services, "Evaluate Requested Access": the server SHALL
// assure that the scope requested is within the scope pre-authorized). An
// asked scope within a registered one is granted as written; one wider
// than what is registered is narrowed to it (system/*.rs asked with
// system/Observation.rs registered grants system/Observation.rs; system/
// *.cruds asked with system/*.rs registered grants system/*.rs). Scopes
// that grant nothing here (patient/ and user/ ones, malformed ones,
// openid...) are dropped and returned as dropped. The result is in the
// order asked, without repeats.
func Intersect(asked string, registered []string) (granted, dropped []string) {
	var reg []smart.Scope
	for _, r := range registered {
		if sc, err := smart.ParseScope(r); err == nil && sc.Level == smart.LevelSystem {
			reg = append(reg, sc)
		}
	}
	for _, raw := range strings.Fields(asked) {
		a, err := smart.ParseScope(raw)
		if err != nil || a.Level != smart.LevelSystem {
			dropped = append(dropped, raw)
			continue
		}
		matched := false
		for _, r := range reg {
			typ := a.Type
			switch {
			case a.Type == "*":
				typ = r.Type
			case r.Type != "*" && r.Type != a.Type:
				continue
			}
			perms := a.Perms & r.Perms
			if perms == 0 {
				continue
			}
			matched = true
			s := raw
			if typ != a.Type || perms != a.Perms {
				s = format(smart.LevelSystem, typ, perms, a.V2)
			}
			if !slices.Contains(granted, s) {
				granted = append(granted, s)
			}
		}
		if !matched {
			dropped = append(dropped, raw)
		}
	}
	return granted, dropped
}

// format writes a scope: in v1 syntax when the asked scope was v1 and the
// permissions have a v1 name (read, write, *), else in v2 letters.
func format(level, typ string, p smart.Perm, v2 bool) string {
	if !v2 {
		switch p {
		case smart.Read | smart.Search:
			return level + "/" + typ + ".read"
		case smart.Create | smart.Update | smart.Delete:
			return level + "/" + typ + ".write"
		case smart.PermAll:
			return level + "/" + typ + ".*"
		}
	}
	return level + "/" + typ + "." + p.String()
}
