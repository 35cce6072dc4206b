package notify

// DeliverOnly makes a Service that delivers but does not match writes:
// a second process's worker on a store whose writes a first Service
// already matches (in one test process, both share the store's hooks).
func DeliverOnly(c *Config) { c.deliverOnly = true }
