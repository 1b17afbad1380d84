//! The API suite (`suite.rs`) again, with every app on PostgreSQL: each in a schema of its own
//! in the database of `FERRY_TEST_DATABASE_URL` (see `helpers.rs` and `postgres.rs`). Tests
//! about SQLite itself say so with `skip_on_postgres` and return at once here.

/// Whether this binary runs every app on PostgreSQL whatever `FERRY_TEST_BACKEND` says.
const ON_POSTGRES: bool = true;

include!("suite.rs");
