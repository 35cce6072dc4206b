package store_test

import (
	"os"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// TestMain runs every test of the store on each backend: one contract,
// two implementations.
func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }
