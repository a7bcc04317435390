//! ssogate: a TLS reverse proxy that signs people in with OpenID Connect before they
//! reach Sentry (or any web app), and lets Sentry's machine traffic through.
//!
//! The request lifecycle is in [`gateway`]; see README.md for the map of modules.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod body;
pub mod check;
pub mod config;
pub mod cookie_header;
pub mod demo;
pub mod devidp;
pub mod errors;
pub mod gateway;
pub mod identity;
#[cfg(test)]
mod layers;
pub mod loadgen;
pub mod observe;
pub mod oidc;
pub mod outbound;
pub mod pages;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod rules;
pub mod server;
pub mod serving_thread;
pub mod session;
