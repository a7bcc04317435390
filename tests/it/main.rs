//! The integration tests, as one test binary (`tests/README.md`): one module per area,
//! the harness in `support/`. One crate links the library and its dependencies once,
//! where a binary per `tests/*.rs` file linked them for each.
//!
//! Every module shares this process with the others, their tests running in parallel
//! threads: none may change process-wide state (environment variables, the current
//! directory, a global tracing subscriber, signal handlers). What needs it runs the
//! `ssogate` binary as a child process (`support::process`, `support::replicas`) or
//! passes the value explicitly (a scoped subscriber, a `stop` future).

mod support;

mod acme;
mod assertion;
mod check_around;
mod check_examples;
mod check_tls;
mod cli;
mod cluster;
mod docs;
mod forwarding;
mod fuzz_corpus;
mod hardening;
mod hostile_clients;
mod lifecycle;
mod loadgen;
mod login;
mod nginx_front;
mod observability;
mod provider_calls;
mod readiness;
mod redirects;
mod reload;
mod replicas;
mod returning;
mod revocation;
mod routes;
mod sentinel;
mod sentry_clients;
mod sessions;
mod tls_grade;
mod trust_boundary;
mod tunnels;
mod upkeep;
mod upstream_boundary;
mod upstream_limits;
mod upstream_pool;
