//! Sentry-shaped requests, one kind per scenario, and the mix that weighs them.
//!
//! - `envelope`: SDK ingestion, `POST /api/<project>/envelope/` with the DSN key in
//!   `X-Sentry-Auth`; the envelopes are shaped like the Python SDK's (an error event,
//!   a transaction with spans, or a session update), in a few sizes (see [`ENVELOPE_SHAPES`]).
//! - `api`: the signed-in UI, `GET /api/0/...` as Sentry's frontend asks, with the
//!   session cookie the tester passes in.
//! - `token`: the API with a Bearer token (scripts, `sentry-cli`).
//! - `login`: a whole sign-in through the provider ([`super::login`]), one request
//!   in the report.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::Full;

/// What a scenario needs from the tester.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The public key of a DSN (`https://<key>@host/<project>`).
    pub dsn_key: Option<String>,
    pub project: String,
    /// `name=value; name2=value2`, as a browser sends it.
    pub cookie: Option<String>,
    pub token: Option<String>,
    pub api_path: String,
    pub token_path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Envelope,
    Api,
    Token,
    Login,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Envelope,
        Scenario::Api,
        Scenario::Token,
        Scenario::Login,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Envelope => "envelope",
            Scenario::Api => "api",
            Scenario::Token => "token",
            Scenario::Login => "login",
        }
    }
}

/// Scenarios with weights, as an evenly interleaved sequence: request `i` is of
/// scenario `sequence[i % len]`, so two runs send the same proportions in the same
/// order.
#[derive(Clone, Debug)]
pub struct Mix {
    weights: Vec<(Scenario, u32)>,
    sequence: Vec<Scenario>,
}

impl Mix {
    pub fn scenario_of(&self, request: u64) -> Scenario {
        self.sequence[(request % self.sequence.len() as u64) as usize]
    }

    pub fn weights(&self) -> &[(Scenario, u32)] {
        &self.weights
    }

    pub fn contains(&self, scenario: Scenario) -> bool {
        self.weights.iter().any(|(s, _)| *s == scenario)
    }

    /// `envelope=8,api=2` as given.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(s, w)| format!("{}={w}", s.name()))
            .collect();
        parts.join(",")
    }
}

/// Parses `envelope=8,api=2,token=1` (a bare name weighs 1).
pub fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut weights: Vec<(Scenario, u32)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
        let scenario = Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name.trim())
            .ok_or_else(|| {
                format!(
                    "`{name}` is not a scenario; the scenarios are envelope, api, token and login"
                )
            })?;
        let weight: u32 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w| (1..=1000).contains(w))
            .ok_or_else(|| format!("the weight of {name} must be a whole number 1-1000"))?;
        if weights.iter().any(|(s, _)| *s == scenario) {
            return Err(format!("{name} is named twice"));
        }
        weights.push((scenario, weight));
    }
    if weights.is_empty() {
        return Err("name at least one scenario, e.g. envelope=8,api=2".into());
    }
    // Each scenario's turns at evenly spaced positions in [0, 1), merged in order.
    let mut positions: Vec<(f64, Scenario)> = weights
        .iter()
        .flat_map(|&(s, w)| (0..w).map(move |k| ((f64::from(k) + 0.5) / f64::from(w), s)))
        .collect();
    positions.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    Ok(Mix {
        weights,
        sequence: positions.into_iter().map(|(_, s)| s).collect(),
    })
}

/// Kinds and sizes of envelope, with their share of the envelope scenario's requests:
/// sessions are the most frequent and small, transactions the largest.
/// (kind, frames or spans, weight)
pub const ENVELOPE_SHAPES: &[(EnvelopeKind, usize, u32)] = &[
    (EnvelopeKind::Session, 0, 40),
    (EnvelopeKind::Event, 8, 15),
    (EnvelopeKind::Event, 40, 10),
    (EnvelopeKind::Transaction, 5, 20),
    (EnvelopeKind::Transaction, 40, 12),
    (EnvelopeKind::Transaction, 200, 3),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeKind {
    Event,
    Transaction,
    Session,
}

/// Stands for the event id in a prepared envelope until a request gets its own.
const ID_PLACEHOLDER: &[u8; 32] = b"feedfacefeedfacefeedfacefeedface";

/// An envelope body prepared once; each request copies it with a fresh event id.
struct EnvelopeTemplate {
    body: Vec<u8>,
    id_at: Vec<usize>,
}

/// Builds the requests of every scenario in the mix; prepared once per run.
pub struct RequestMaker {
    envelope_uri: Uri,
    api_uri: Uri,
    token_uri: Uri,
    /// The same paths in origin form (`/api/0/...`), with `host`, for an HTTP/1.1
    /// connection of the bench's own ([`super::connection`]).
    envelope_path: Uri,
    api_path: Uri,
    token_path: Uri,
    host: HeaderValue,
    sentry_auth: Option<HeaderValue>,
    cookie: Option<HeaderValue>,
    bearer: Option<HeaderValue>,
    /// One template per weight unit of ENVELOPE_SHAPES, so `request % len` follows the shares.
    envelopes: Vec<std::sync::Arc<EnvelopeTemplate>>,
}

impl RequestMaker {
    pub fn new(base: &url::Url, credentials: &Credentials) -> Result<RequestMaker, String> {
        let base_text = base.as_str().trim_end_matches('/');
        let uri = |path: &str| -> Result<Uri, String> {
            let path = if path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/{path}")
            };
            format!("{base_text}{path}")
                .parse()
                .map_err(|e| format!("`{path}` does not make a URL: {e}"))
        };
        let header_value = |text: String, what: &str| {
            HeaderValue::try_from(text).map_err(|_| format!("{what} is not a valid header value"))
        };
        let sentry_auth = credentials
            .dsn_key
            .as_ref()
            .map(|key| {
                header_value(
                    format!(
                        "Sentry sentry_version=7, sentry_key={key}, sentry_client=ssogate-bench/{}",
                        env!("CARGO_PKG_VERSION")
                    ),
                    "--dsn-key",
                )
            })
            .transpose()?;
        let cookie = credentials
            .cookie
            .clone()
            .map(|c| header_value(c, "--cookie"))
            .transpose()?;
        let bearer = credentials
            .token
            .as_ref()
            .map(|t| header_value(format!("Bearer {t}"), "--token"))
            .transpose()?;
        let dsn = format!(
            "{}://{}@{}/{}",
            base.scheme(),
            credentials.dsn_key.as_deref().unwrap_or("public"),
            base.host_str().unwrap_or("localhost"),
            credentials.project
        );
        let mut envelopes = Vec::new();
        for &(kind, size, weight) in ENVELOPE_SHAPES {
            let template = std::sync::Arc::new(envelope_template(kind, size, &dsn));
            envelopes.extend(std::iter::repeat_n(template, weight as usize));
        }
        let envelope_uri = uri(&format!("/api/{}/envelope/", credentials.project))?;
        let api_uri = uri(&credentials.api_path)?;
        let token_uri = uri(&credentials.token_path)?;
        let origin_form = |uri: &Uri| -> Uri {
            uri.path_and_query()
                .map_or_else(|| Uri::from_static("/"), |path| Uri::from(path.clone()))
        };
        let host = match base.port() {
            Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        Ok(RequestMaker {
            envelope_path: origin_form(&envelope_uri),
            api_path: origin_form(&api_uri),
            token_path: origin_form(&token_uri),
            host: header_value(host, "the URL's host")?,
            envelope_uri,
            api_uri,
            token_uri,
            sentry_auth,
            cookie,
            bearer,
            envelopes,
        })
    }

    /// A request of `scenario`; envelopes take their shape at random by share. `None`
    /// for a login, which is several requests ([`super::login`]).
    pub fn make(&self, scenario: Scenario) -> Option<Request<Full<Bytes>>> {
        Some(self.build(scenario, false)?.map(Full::new))
    }

    /// As [`RequestMaker::make`], in origin form (`GET /path` with a `Host` header) as an
    /// HTTP/1.1 connection sends it, or absolute (`http2`) for HTTP/2's `:authority`.
    pub fn make_for_connection(&self, scenario: Scenario, http2: bool) -> Option<Request<Bytes>> {
        self.build(scenario, !http2)
    }

    fn build(&self, scenario: Scenario, origin_form: bool) -> Option<Request<Bytes>> {
        let uri = |absolute: &Uri, path: &Uri| {
            if origin_form {
                path.clone()
            } else {
                absolute.clone()
            }
        };
        // Parts set in place rather than through `Request::builder()`, which moves the
        // whole request at each step: this runs for every request of a run.
        let (method, target, body) = match scenario {
            Scenario::Login => return None,
            Scenario::Envelope => {
                let template = &self.envelopes[rand::random_range(0..self.envelopes.len())];
                let mut body = template.body.clone();
                let id = format!("{:032x}", rand::random::<u128>());
                for &at in &template.id_at {
                    body[at..at + 32].copy_from_slice(id.as_bytes());
                }
                (
                    Method::POST,
                    uri(&self.envelope_uri, &self.envelope_path),
                    Bytes::from(body),
                )
            }
            Scenario::Api => (
                Method::GET,
                uri(&self.api_uri, &self.api_path),
                Bytes::new(),
            ),
            Scenario::Token => (
                Method::GET,
                uri(&self.token_uri, &self.token_path),
                Bytes::new(),
            ),
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = target;
        let headers = request.headers_mut();
        if origin_form {
            headers.insert(header::HOST, self.host.clone());
        }
        match scenario {
            Scenario::Envelope => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-sentry-envelope"),
                );
                if let Some(auth) = &self.sentry_auth {
                    headers.insert(http::HeaderName::from_static("x-sentry-auth"), auth.clone());
                }
            }
            _ => {
                headers.insert(
                    header::ACCEPT,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                let credential = if scenario == Scenario::Api {
                    self.cookie.as_ref().map(|c| (header::COOKIE, c))
                } else {
                    self.bearer.as_ref().map(|b| (header::AUTHORIZATION, b))
                };
                if let Some((name, value)) = credential {
                    headers.insert(name, value.clone());
                }
            }
        }
        Some(request)
    }
}

/// An envelope as the Python SDK sends it: a header line, then one item (its header
/// line and its JSON payload). `size` is the stack frames of an event or the spans of
/// a transaction.
fn envelope_template(kind: EnvelopeKind, size: usize, dsn: &str) -> EnvelopeTemplate {
    let id = std::str::from_utf8(ID_PLACEHOLDER).expect("ascii");
    let now = chrono::Utc::now();
    let timestamp = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let seconds = now.timestamp_micros() as f64 / 1e6;
    let sdk = serde_json::json!({"name": "sentry.python", "version": "2.19.2"});
    let (item_type, payload) = match kind {
        EnvelopeKind::Session => (
            "session",
            serde_json::json!({
                "sid": id, "did": "user-4711", "init": false, "started": timestamp,
                "timestamp": timestamp, "status": "ok", "errors": 0, "duration": 12.5,
                "attrs": {"release": "shop@2.14.0", "environment": "production"}
            }),
        ),
        EnvelopeKind::Event => {
            let frames: Vec<serde_json::Value> = (0..size)
                .map(|i| {
                    serde_json::json!({
                        "filename": format!("shop/views/checkout_{}.py", i % 7),
                        "abs_path": format!("/srv/shop/shop/views/checkout_{}.py", i % 7),
                        "function": format!("handle_step_{i}"),
                        "module": "shop.views.checkout",
                        "lineno": 40 + i,
                        "context_line": "    order = Order.objects.select_for_update().get(pk=order_id)",
                        "pre_context": ["", "@transaction.atomic", "def handle(request, order_id):"],
                        "post_context": ["    order.confirm()", "    return redirect(order)"],
                        "in_app": i % 3 != 0,
                        "vars": {"order_id": "'81723'", "request": "<WSGIRequest: POST '/checkout/'>"}
                    })
                })
                .collect();
            let breadcrumbs: Vec<serde_json::Value> = (0..size.min(20))
                .map(|i| serde_json::json!({
                    "type": "default", "category": "query", "level": "info", "timestamp": seconds,
                    "message": format!("SELECT \"shop_order\".\"id\" FROM \"shop_order\" WHERE \"id\" = {i}")
                }))
                .collect();
            (
                "event",
                serde_json::json!({
                    "event_id": id, "timestamp": seconds, "platform": "python", "level": "error",
                    "logger": "django.request", "server_name": "web-3", "release": "shop@2.14.0",
                    "environment": "production", "sdk": sdk.clone(),
                    "exception": {"values": [{
                        "type": "DoesNotExist", "value": "Order matching query does not exist.",
                        "module": "shop.models", "mechanism": {"type": "django", "handled": false},
                        "stacktrace": {"frames": frames}
                    }]},
                    "breadcrumbs": {"values": breadcrumbs},
                    "request": {"url": "https://shop.example.com/checkout/", "method": "POST",
                                "headers": {"User-Agent": "Mozilla/5.0", "Accept": "text/html"}},
                    "contexts": {"runtime": {"name": "CPython", "version": "3.12.7"},
                                 "os": {"name": "Linux"}},
                    "tags": {"url": "/checkout/", "browser": "Firefox 133"}
                }),
            )
        }
        EnvelopeKind::Transaction => {
            let mut spans = Vec::new();
            for i in 0..size {
                let mut span_id = String::new();
                let _ = write!(span_id, "{:016x}", 0x5eed_0000_u64 + i as u64);
                spans.push(serde_json::json!({
                    "span_id": span_id, "parent_span_id": "a1b2c3d4e5f60718", "trace_id": id,
                    "op": if i % 4 == 0 { "http.client" } else { "db" },
                    "description": format!("SELECT \"shop_item\".* FROM \"shop_item\" WHERE \"order_id\" = {i}"),
                    "start_timestamp": seconds, "timestamp": seconds + 0.002,
                    "status": "ok", "origin": "auto.db.django",
                    "data": {"db.system": "postgresql", "thread.id": "140245", "thread.name": "MainThread"}
                }));
            }
            (
                "transaction",
                serde_json::json!({
                    "event_id": id, "type": "transaction", "transaction": "/checkout/{order_id}/",
                    "transaction_info": {"source": "route"}, "platform": "python",
                    "start_timestamp": seconds, "timestamp": seconds + 0.25,
                    "release": "shop@2.14.0", "environment": "production", "sdk": sdk.clone(),
                    "contexts": {"trace": {"trace_id": id, "span_id": "a1b2c3d4e5f60718",
                                           "op": "http.server", "status": "ok"}},
                    "spans": spans
                }),
            )
        }
    };
    let payload = serde_json::to_vec(&payload).expect("JSON");
    let mut body = serde_json::to_vec(&serde_json::json!({
        "event_id": id, "sent_at": timestamp, "dsn": dsn, "sdk": sdk
    }))
    .expect("JSON");
    body.push(b'\n');
    body.extend(
        serde_json::to_vec(&serde_json::json!({
            "type": item_type, "content_type": "application/json", "length": payload.len()
        }))
        .expect("JSON"),
    );
    body.push(b'\n');
    body.extend(payload);
    body.push(b'\n');
    let id_at = memchr::memmem::find_iter(&body, ID_PLACEHOLDER).collect();
    EnvelopeTemplate { body, id_at }
}

/// The envelope shapes as the report names them: `session 0.4 KB 40%, ...`.
pub fn envelope_sizes() -> String {
    let shapes: Vec<String> = ENVELOPE_SHAPES
        .iter()
        .map(|&(kind, size, weight)| {
            let bytes = envelope_template(kind, size, "https://key@host/1")
                .body
                .len();
            let kind = format!("{kind:?}").to_lowercase();
            format!("{kind} {:.1} KB {weight}%", bytes as f64 / 1000.0)
        })
        .collect();
    shapes.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_interleaves_its_scenarios_by_weight() {
        let mix = parse_mix("envelope=3,api=1").unwrap();
        let first: Vec<&str> = (0..8).map(|i| mix.scenario_of(i).name()).collect();
        assert_eq!(
            first,
            ["envelope", "envelope", "api", "envelope"].repeat(2),
            "spread out, not three in a row then one"
        );
        assert_eq!(mix.describe(), "envelope=3,api=1");
        for bad in ["", "logon=1", "api=0", "api=x", "api,api"] {
            assert!(parse_mix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn envelopes_are_valid_and_each_request_gets_its_own_event_id() {
        let base = url::Url::parse("http://127.0.0.1:9000").unwrap();
        let maker = RequestMaker::new(
            &base,
            &Credentials {
                dsn_key: Some("abc123".into()),
                project: "42".into(),
                cookie: None,
                token: None,
                api_path: "/api/0/organizations/".into(),
                token_path: "/api/0/projects/".into(),
            },
        )
        .unwrap();
        let (a, b) = (
            maker.make(Scenario::Envelope).unwrap(),
            maker.make(Scenario::Envelope).unwrap(),
        );
        assert!(maker.make(Scenario::Login).is_none());
        assert_eq!(a.uri(), "http://127.0.0.1:9000/api/42/envelope/");
        assert!(
            a.headers()["x-sentry-auth"]
                .to_str()
                .unwrap()
                .contains("sentry_key=abc123")
        );
        let text = |r: &Request<Full<Bytes>>| {
            use http_body_util::BodyExt;
            let body = ready_body(r.body().clone().collect());
            String::from_utf8(body.to_vec()).unwrap()
        };
        let (a, b) = (text(&a), text(&b));
        let lines: Vec<&str> = a.lines().collect();
        assert_eq!(lines.len(), 3, "header, item header, payload");
        let header: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let item: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        let payload: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(item["length"], lines[2].len());
        assert_ne!(
            header["event_id"],
            serde_json::json!(std::str::from_utf8(ID_PLACEHOLDER).unwrap())
        );
        assert_ne!(a.lines().next(), b.lines().next(), "fresh event ids");
        assert!(payload.is_object());
        let sizes = envelope_sizes();
        assert!(sizes.starts_with("session 0."), "{sizes}");
        assert_eq!(sizes.matches('%').count(), ENVELOPE_SHAPES.len(), "{sizes}");
    }

    /// The body of a `Full` is ready at once.
    fn ready_body(collect: http_body_util::combinators::Collect<Full<Bytes>>) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(collect)
            .unwrap()
            .to_bytes()
    }
}
