// Package connectors builds the eligibility connectors named in an
// eligibility configuration. It is the one place that knows every vendor
// package: adding a vendor is its subpackage plus one case here.
package connectors

import (
	"fmt"
	"log/slog"
	"net/http"
	"sort"

	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/sohar"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy"
	"github.com/p2pserver/p2pserver/facades/verifytreatment"
)

// Vendors lists the vendor names New knows.
var Vendors = []string{sohar.Vendor, tuuthfairy.Vendor, verifytreatment.Vendor}

// New builds a connector for each vendor with settings under
// cfg.Vendors, in name order. hc may be nil (a client checked by netguard.Default). It
// refuses an unknown vendor name and settings a vendor refuses.
func New(cfg eligibility.Config, hc *http.Client, log *slog.Logger) ([]eligibility.Connector, error) {
	var names []string
	for n := range cfg.Vendors {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []eligibility.Connector
	for _, name := range names {
		var c eligibility.Connector
		var err error
		switch name {
		case sohar.Vendor:
			var vc sohar.Config
			if _, err = cfg.DecodeVendor(name, &vc); err == nil {
				c, err = sohar.New(vc, hc)
			}
		case verifytreatment.Vendor:
			var vc verifytreatment.Config
			if _, err = cfg.DecodeVendor(name, &vc); err == nil {
				c, err = verifytreatment.New(vc, hc, log)
			}
		case tuuthfairy.Vendor:
			var vc tuuthfairy.Config
			if _, err = cfg.DecodeVendor(name, &vc); err == nil {
				c, err = tuuthfairy.New(vc, hc)
			}
		default:
			return nil, fmt.Errorf("eligibility config: unknown vendor %q (known: %v)", name, Vendors)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
