//! Which host a request is for, and whether this gateway serves it.
//!
//! The gateway answers for `public_url`'s host and the names in `server.host_aliases`,
//! and for nothing else: a request for another host would reach Sentry, which builds
//! absolute URLs (password-reset mails, redirects) from the host it is told. Names are
//! compared without case and a final dot; a port must be well-formed but is not
//! compared (replicas and NAT reach the gateway on other ports than `public_url`'s, and
//! the upstream is told `public_url`'s anyway). The host a request is for is
//! - HTTP/1.x: the authority of an absolute-form target when there is one (its `Host`
//!   is then ignored, RFC 9112 section 3.2.2), else `Host` (required in HTTP/1.1; an
//!   HTTP/1.0 request without one is for `public_url`);
//! - HTTP/2: `:authority`, or `Host` without one; both present must agree (RFC 9113
//!   section 8.3.1).
//!
//! Over TLS a client that sent a server name (SNI) must ask for that same host: a
//! connection set up for one name carries no requests for another (a client that
//! reuses one gets 421 and retries on a connection of its own, RFC 9110 section
//! 15.5.20). Clients that connect by IP address send no server name.
//!
//! Whatever the request said, the upstream is told `public_url`'s host.

use http::header::HOST;
use http::uri::Authority;
use http::{Request, Version};
use url::Url;

/// The server name a TLS client sent (SNI), put in the request's extensions by the
/// server for each request of that connection.
#[derive(Clone, Debug)]
pub struct TlsServerName(pub std::sync::Arc<str>);

/// Why a request's host is not served.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostRefusal {
    #[error("the request names no host")]
    Missing,
    #[error("the request's host is malformed")]
    Malformed,
    #[error("the request's Host and :authority disagree")]
    Conflicting,
    #[error("the request is for a host this gateway does not serve")]
    Foreign,
    #[error("the request's TLS connection was opened for another host")]
    OtherThanTlsName,
}

impl HostRefusal {
    /// True for the refusals that a request for the right host on a fresh connection
    /// would not get (421, or a redirect for a page load); the others are 400.
    pub fn is_misdirected(&self) -> bool {
        matches!(self, Self::Foreign | Self::OtherThanTlsName)
    }
}

/// The hosts this gateway answers for.
#[derive(Debug)]
pub struct ServedHosts {
    /// `public_url`'s host, lower case (IPv6 in brackets).
    public: String,
    /// `public_url`'s port, explicit or the scheme's default: the port of an
    /// authority without one, when `Host` and `:authority` are compared.
    port: u16,
    /// `server.host_aliases`, in the same form as `public`.
    aliases: Vec<String>,
}

impl ServedHosts {
    pub fn new(public_url: &Url, aliases: &[String]) -> Self {
        Self {
            public: normalized(public_url.host_str().unwrap_or_default()).into_owned(),
            port: public_url.port_or_known_default().unwrap_or(443),
            aliases: aliases.iter().map(|a| normalized(a).into_owned()).collect(),
        }
    }

    /// Whether this gateway serves `request` (see the module docs). `tls_name` is the
    /// server name its TLS client sent, if any.
    pub fn check<B>(
        &self,
        request: &Request<B>,
        tls_name: Option<&str>,
    ) -> Result<(), HostRefusal> {
        let requested = match requested_authority(request, self.port)? {
            Some(authority) => Some(self.served_name(authority)?),
            None => None,
        };
        if let Some(tls_name) = tls_name {
            let tls_name = normalized(tls_name);
            if !self.is_served(&tls_name) || requested.is_some_and(|host| host != tls_name) {
                return Err(HostRefusal::OtherThanTlsName);
            }
        }
        Ok(())
    }

    /// The host of `authority`, when it is served.
    fn served_name<'a>(
        &self,
        authority: &'a str,
    ) -> Result<std::borrow::Cow<'a, str>, HostRefusal> {
        let (host, _port) = parse_authority(authority)?;
        let host = normalized(host);
        if !self.is_served(&host) {
            return Err(HostRefusal::Foreign);
        }
        Ok(host)
    }

    fn is_served(&self, host: &str) -> bool {
        host == self.public || self.aliases.iter().any(|alias| alias == host)
    }
}

/// The authority a request is for, as the module docs say; `None` for an HTTP/1.0
/// request without one. (`default_port` is the port of an authority without one.)
fn requested_authority<B>(
    request: &Request<B>,
    default_port: u16,
) -> Result<Option<&str>, HostRefusal> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value.to_str().map_err(|_| HostRefusal::Malformed)?),
        (Some(_), Some(_)) => return Err(HostRefusal::Conflicting),
    };
    let target = request.uri().authority().map(Authority::as_str);
    match request.version() {
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11 => match (target, header) {
            (Some(target), _) => Ok(Some(target)),
            (None, Some(header)) => Ok(Some(header)),
            (None, None) if request.version() == Version::HTTP_11 => Err(HostRefusal::Missing),
            (None, None) => Ok(None),
        },
        _ => match (target, header) {
            (Some(target), Some(header)) => {
                let same = |a: &str, b: &str| {
                    let (a, b) = (parse_authority(a), parse_authority(b));
                    matches!((a, b), (Ok((ah, ap)), Ok((bh, bp)))
                        if normalized(ah) == normalized(bh)
                            && ap.unwrap_or(default_port) == bp.unwrap_or(default_port))
                };
                if same(target, header) {
                    Ok(Some(target))
                } else {
                    Err(HostRefusal::Conflicting)
                }
            }
            (Some(authority), None) | (None, Some(authority)) => Ok(Some(authority)),
            (None, None) => Err(HostRefusal::Missing),
        },
    }
}

/// `host[:port]` with neither user information nor an empty host.
fn parse_authority(text: &str) -> Result<(&str, Option<u16>), HostRefusal> {
    split_authority(text, host_len)
}

/// `text`'s host and port, the host's length found by `host_len`.
fn split_authority(
    text: &str,
    host_len: fn(&str) -> Result<usize, HostRefusal>,
) -> Result<(&str, Option<u16>), HostRefusal> {
    let (host, rest) = text.split_at(host_len(text)?);
    // `Authority` takes any text after the colon as a port; only digits are one. An
    // empty port (`host:`) names the default port.
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().map_err(|_| HostRefusal::Malformed)?)
        }
        _ => return Err(HostRefusal::Malformed),
    };
    Ok((host, port))
}

/// The length of `text`'s host part. The usual `name:port` or `name`, of letters,
/// digits, dots and hyphens, is valid as it is (parsing it as an `Authority` would
/// copy it first, on every request); anything else is parsed.
fn host_len(text: &str) -> Result<usize, HostRefusal> {
    let name_end = text.find(':').unwrap_or(text.len());
    let plain = text[..name_end]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if name_end > 0 && plain {
        Ok(name_end)
    } else {
        authority_host_len(text)
    }
}

/// The length of the host part of `text`, parsed as an `Authority`.
fn authority_host_len(text: &str) -> Result<usize, HostRefusal> {
    if text.contains('@') {
        return Err(HostRefusal::Malformed);
    }
    let authority: Authority = text.parse().map_err(|_| HostRefusal::Malformed)?;
    if authority.host().is_empty() {
        return Err(HostRefusal::Malformed);
    }
    Ok(authority.host().len())
}

/// A host as it is compared: lower case, without a final dot (`Example.COM.` is
/// `example.com`).
fn normalized(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The shortcut for plain names reads every authority as the full parse does.
        #[test]
        fn plain_names_are_read_as_an_authority_parse_reads_them(
            text in "[a-zA-Z0-9.:@\\[\\]%_~ -]{0,24}",
        ) {
            let full = split_authority(&text, authority_host_len);
            prop_assert_eq!(parse_authority(&text), full, "{:?}", text);
        }
    }

    fn served() -> ServedHosts {
        ServedHosts::new(
            &Url::parse("https://sentry.example.com").unwrap(),
            &["sentry.internal".into(), "[2001:db8::5]".into()],
        )
    }

    fn request(version: Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get(target).version(version);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_public_url_and_the_aliases_are_served() {
        let hosts = served();
        let served_hosts = [
            "sentry.example.com",
            "SENTRY.Example.com",
            "sentry.example.com.",
            "sentry.example.com:443",
            "sentry.internal",
            "sentry.internal:443",
            "[2001:db8::5]",
            "[2001:db8::5]:443",
            "sentry.example.com:8443",
            "sentry.example.com:",
        ];
        for host in served_hosts {
            let r = request(Version::HTTP_11, "/", &[host]);
            assert_eq!(hosts.check(&r, None), Ok(()), "{host}");
        }
        let foreign = [
            "evil.example",
            "sentry.example.com.evil.example",
            "evil.example:443",
            "127.0.0.1",
            "[::1]",
            "sentry.example.co",
            "xsentry.example.com",
            "sentry.example.com..",
        ];
        for host in foreign {
            let r = request(Version::HTTP_11, "/", &[host]);
            assert!(hosts.check(&r, None).is_err(), "{host}");
        }
        for malformed in [
            "",
            "user@sentry.example.com",
            "sentry.example.com:x",
            "sentry.example.com:+443",
            "sentry.example.com:443:443",
            "sentry.example.com:99999",
            ":443",
            "a b",
        ] {
            let r = request(Version::HTTP_11, "/", &[malformed]);
            assert!(hosts.check(&r, None).is_err(), "{malformed:?}");
        }
    }

    #[test]
    fn http11_needs_a_host_and_absolute_form_overrides_it() {
        let hosts = served();
        let r = request(Version::HTTP_11, "/", &[]);
        assert_eq!(hosts.check(&r, None), Err(HostRefusal::Missing));
        let r = request(Version::HTTP_10, "/", &[]);
        assert_eq!(hosts.check(&r, None), Ok(()));
        let r = request(Version::HTTP_11, "/", &["a", "b"]);
        assert_eq!(hosts.check(&r, None), Err(HostRefusal::Conflicting));
        // RFC 9112 section 3.2.2: the target's authority, never the Host header.
        let r = request(
            Version::HTTP_11,
            "https://evil.example/x",
            &["sentry.example.com"],
        );
        assert_eq!(hosts.check(&r, None), Err(HostRefusal::Foreign));
        let r = request(
            Version::HTTP_11,
            "https://sentry.example.com/x",
            &["evil.example"],
        );
        assert_eq!(hosts.check(&r, None), Ok(()));
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let hosts = served();
        let r = request(Version::HTTP_2, "https://evil.example/", &[]);
        assert_eq!(hosts.check(&r, None), Err(HostRefusal::Foreign));
        let r = request(
            Version::HTTP_2,
            "https://sentry.example.com/",
            &["evil.example"],
        );
        assert_eq!(hosts.check(&r, None), Err(HostRefusal::Conflicting));
        let r = request(
            Version::HTTP_2,
            "https://sentry.example.com/",
            &["Sentry.example.com:443"],
        );
        assert_eq!(hosts.check(&r, None), Ok(()));
        let r = request(Version::HTTP_2, "/", &["sentry.example.com"]);
        assert_eq!(hosts.check(&r, None), Ok(()));
        let r = request(Version::HTTP_2, "/", &[]);
        assert_eq!(hosts.check(&r, None), Err(HostRefusal::Missing));
    }

    #[test]
    fn a_tls_server_name_must_be_the_requested_host() {
        let hosts = served();
        let r = request(Version::HTTP_11, "/", &["sentry.example.com"]);
        assert_eq!(hosts.check(&r, Some("sentry.example.com")), Ok(()));
        assert_eq!(hosts.check(&r, Some("SENTRY.example.com.")), Ok(()));
        assert_eq!(
            hosts.check(&r, Some("sentry.internal")),
            Err(HostRefusal::OtherThanTlsName)
        );
        assert_eq!(
            hosts.check(&r, Some("evil.example")),
            Err(HostRefusal::OtherThanTlsName)
        );
        let r = request(Version::HTTP_10, "/", &[]);
        assert_eq!(
            hosts.check(&r, Some("evil.example")),
            Err(HostRefusal::OtherThanTlsName)
        );
        // A foreign host is foreign first (a page load may be sent to public_url).
        let r = request(Version::HTTP_11, "/", &["evil.example"]);
        assert_eq!(
            hosts.check(&r, Some("evil.example")),
            Err(HostRefusal::Foreign)
        );
    }

    #[test]
    fn an_http10_request_without_host_is_for_its_tls_name() {
        let hosts = served();
        let r = request(Version::HTTP_10, "/", &[]);
        assert_eq!(hosts.check(&r, Some("sentry.internal")), Ok(()));
        assert_eq!(hosts.check(&r, None), Ok(()));
    }
}
