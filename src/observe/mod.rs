//! What an operator sees of the gateway at work: Prometheus metrics ([`metrics`]),
//! one access line per request with its request id ([`access`], formatted by
//! [`access_format`], which writes it straight into the log output), and the log output
//! itself, human-readable or JSON ([`logging`]), written in batches off the serving
//! threads ([`log_output`]).
//!
//! Nothing here decides anything about a request, and nothing here ever writes a
//! secret: no cookie, token, code or query string reaches a log line.

pub mod access;
pub mod access_format;
pub mod log_output;
pub mod logging;
pub mod metrics;

pub use access::{AccessRecord, LoggedBody, REQUEST_ID, SignedIn, request_id};
pub use metrics::{LoginRefusal, Metrics, RouteClass, UpkeepOutcome, UpstreamFailure};
