package pgdb

// MigrateTo brings the schema of the database pool is on to version to,
// for the tests that make a database as an earlier version left it.
var MigrateTo = migrateTo

// SchemaVersions is the version of the current schema.
var SchemaVersions = len(migrations)
