//! walrelay's integration tests against real PostgreSQL servers (and a real S3 server).
//! One test target (`protocol`): the harness plus one module per test file.

mod archive_kill9;
mod archive_run;
mod archive_store;
mod barman_pg_receivewal;
mod bench_quick;
mod delay_feeds;
mod harness;
mod harness_selftest;
mod ops_packaging;
mod ops_quickstart;
mod ops_reload;
mod pgrw_cli;
mod pgrw_compress;
mod receive;
mod receive_faults;
mod server_archive_fallback;
mod server_auth;
mod server_common;
mod server_fanout;
mod server_fuzz;
mod server_restart;
mod server_status;
mod server_stream;
mod server_timeline;
mod store_crash;
mod store_crash_common;
mod store_powerloss;
mod tap_pg_receivewal;
mod upstream_auth;
mod upstream_conn;
mod upstream_liveness;
mod upstream_unix;
