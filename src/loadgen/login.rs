//! The `login` scenario: the whole sign-in a person goes through, as a browser without
//! JavaScript does it, counted as one request from the first GET to the landing page.
//!
//! GET a protected page (as a navigation); follow the redirects; on the gateway's
//! sign-in page follow its link to `/oauth2/start`; at the provider, find the `<form>`
//! with a password input, fill the username-like input and the password, keep the
//! hidden inputs and submit it; submit a form that follows (a consent page) as it is;
//! follow the redirects back through the gateway's callback to the page, which must
//! answer 200. Each login has its own cookie jar (cookies are kept per host and port,
//! by path). Redirects go only to loopback, the target's host or a host named with
//! `--allow-host`.
//!
//! Written for the development provider (`ssogate demo`) and for the login and consent
//! pages of the npm `oidc-provider` (Encvoy ID's engine); a provider whose login needs
//! JavaScript, or more than one page of credentials, is out of its reach.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;

use super::report::Outcome;

/// The most redirects and forms one login may take.
const MAX_STEPS: usize = 30;

/// Reads a pool of users: `user:password` lines; blank lines and `#` comments skipped.
pub fn parse_users(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut users = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (user, password) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: not user:password", number + 1))?;
        users.push((user.trim().to_owned(), password.to_owned()));
    }
    if users.is_empty() {
        return Err("no user:password line".into());
    }
    Ok(users)
}

/// Where logins start and which hosts they may be sent to.
pub struct LoginFlow {
    pub start: url::Url,
    pub users: Vec<(String, String)>,
    /// Hosts besides loopback a redirect may lead to: the target's and `--allow-host`'s.
    pub hosts: Vec<String>,
}

/// What a finished login holds: its cookies.
#[derive(Default, Debug)]
pub struct Jar {
    cookies: Vec<Cookie>,
}

#[derive(Debug)]
struct Cookie {
    origin: String,
    path: String,
    name: String,
    value: String,
}

fn origin_of(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

impl Jar {
    /// Keeps the cookies of `Set-Cookie` headers answered for `url`.
    fn store<'a>(&mut self, url: &url::Url, set_cookies: impl Iterator<Item = &'a HeaderValue>) {
        for header in set_cookies {
            let Ok(text) = header.to_str() else { continue };
            let mut parts = text.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
            // RFC 6265's default path: the request's path up to its last slash.
            let mut path = match url.path().rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(at) => url.path()[..at].to_owned(),
            };
            let mut gone = value.is_empty();
            for attribute in parts {
                let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
                match key.trim().to_ascii_lowercase().as_str() {
                    "path" if val.trim().starts_with('/') => val.trim().clone_into(&mut path),
                    "max-age" => gone |= val.trim().parse::<i64>().is_ok_and(|s| s <= 0),
                    "expires" => gone |= val.contains("1970"),
                    _ => {}
                }
            }
            let origin = origin_of(url);
            self.cookies
                .retain(|c| !(c.origin == origin && c.name == name && c.path == path));
            if !gone {
                self.cookies.push(Cookie {
                    origin,
                    path,
                    name,
                    value,
                });
            }
        }
    }

    /// The `Cookie` header for `url`: longer paths first.
    pub fn header_for(&self, url: &url::Url) -> Option<String> {
        let origin = origin_of(url);
        let mut matching: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|c| c.origin == origin && path_matches(url.path(), &c.path))
            .collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        let pairs: Vec<String> = matching
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }
}

fn path_matches(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request[cookie.len()..].starts_with('/')))
}

/// A `<form>` of a page: where it goes and its inputs.
#[derive(Debug, PartialEq)]
pub struct Form {
    pub action: Option<String>,
    pub method: Method,
    pub inputs: Vec<Input>,
}

#[derive(Debug, PartialEq)]
pub struct Input {
    pub name: String,
    pub kind: String,
    pub value: String,
    pub checked: bool,
}

impl Form {
    fn has_password(&self) -> bool {
        self.inputs.iter().any(|i| i.kind == "password")
    }

    /// The fields to send: hidden and other valued inputs as they are, the password
    /// inputs with `password`, and the username-like input with `user`.
    pub fn fill(&self, credentials: Option<(&str, &str)>) -> Vec<(String, String)> {
        let text_like = |i: &Input| matches!(i.kind.as_str(), "text" | "email" | "tel" | "");
        let username = credentials.and_then(|_| {
            let liked = |i: &&&Input| {
                let name = i.name.to_ascii_lowercase();
                ["user", "login", "email", "name", "account"]
                    .iter()
                    .any(|word| name.contains(word))
            };
            let candidates: Vec<&Input> = self.inputs.iter().filter(|i| text_like(i)).collect();
            candidates
                .iter()
                .find(liked)
                .or(candidates.first())
                .map(|i| i.name.clone())
        });
        let mut fields = Vec::new();
        let mut submitted = false;
        for input in &self.inputs {
            if input.name.is_empty() {
                continue;
            }
            let value = match input.kind.as_str() {
                "password" => match credentials {
                    Some((_, password)) => password.to_owned(),
                    None => continue,
                },
                "checkbox" | "radio" if !input.checked => continue,
                "submit" | "image" if submitted => continue,
                "submit" | "image" => {
                    submitted = true;
                    input.value.clone()
                }
                "button" | "reset" | "file" => continue,
                _ if Some(&input.name) == username.as_ref() => {
                    credentials.map_or_else(String::new, |(user, _)| user.to_owned())
                }
                _ => input.value.clone(),
            };
            fields.push((input.name.clone(), value));
        }
        fields
    }
}

/// The forms of an HTML page, read with a few lines (no scripts, no nesting).
pub fn forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut forms = Vec::new();
    let mut from = 0;
    while let Some(at) = lower[from..].find("<form").map(|at| at + from) {
        let end = lower[at..]
            .find("</form")
            .map_or(html.len(), |end| end + at);
        let attributes = tag_attributes(&html[at..end]);
        let method = match attributes.get("method").map(|m| m.to_ascii_uppercase()) {
            Some(m) if m == "POST" => Method::POST,
            _ => Method::GET,
        };
        let mut inputs = Vec::new();
        let body = &html[at..end];
        let body_lower = &lower[at..end];
        let mut next = 0;
        while let Some(input) = body_lower[next..].find("<input").map(|i| i + next) {
            let attributes = tag_attributes(&body[input..]);
            inputs.push(Input {
                name: attributes.get("name").cloned().unwrap_or_default(),
                kind: attributes
                    .get("type")
                    .map(|t| t.to_ascii_lowercase())
                    .unwrap_or_default(),
                value: attributes.get("value").cloned().unwrap_or_default(),
                checked: attributes.contains_key("checked"),
            });
            next = input + 6;
        }
        forms.push(Form {
            action: attributes.get("action").cloned(),
            method,
            inputs,
        });
        from = end.max(at + 5);
    }
    forms
}

/// The attributes of the tag `text` starts with (`<name a="x" b='y' c=z d>`), names in
/// lower case, values with their character references decoded.
fn tag_attributes(text: &str) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    let tag_end = text.find('>').unwrap_or(text.len());
    let inside = &text[..tag_end];
    // Past the tag's name.
    let mut rest = inside
        .trim_start_matches('<')
        .trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            break;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        let value = if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (value, remaining) = match after.chars().next() {
                Some(quote @ ('"' | '\'')) => {
                    let close = after[1..].find(quote).map_or(after.len(), |c| c + 1);
                    (&after[1..close], after.get(close + 1..).unwrap_or(""))
                }
                _ => {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            rest = remaining;
            decode_references(value)
        } else {
            String::new()
        };
        if name.is_empty() {
            break;
        }
        attributes.entry(name).or_insert(value);
    }
    attributes
}

fn decode_references(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, length)) => {
                out.push(c);
                rest = &rest[length..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The first link of the page to the gateway's `/oauth2/start` (its sign-in page).
fn start_link(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("<a ").map(|at| at + from) {
        if let Some(href) = tag_attributes(&html[at..]).get("href")
            && href.contains("/oauth2/start")
        {
            return Some(href.clone());
        }
        from = at + 3;
    }
    None
}

fn failed(why: &'static str) -> Outcome {
    Outcome::LoginFailed(why)
}

impl LoginFlow {
    fn may_go_to(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = match bare.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => bare.eq_ignore_ascii_case("localhost"),
        };
        matches!(url.scheme(), "http" | "https")
            && (loopback || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(bare)))
    }

    /// One login by user number `index` (of the pool, in turn): its cookies once it
    /// landed on the page with a 200, or how it failed.
    pub(super) async fn run(
        &self,
        client: &super::BenchClient,
        index: u64,
    ) -> Result<Jar, Outcome> {
        let (user, password) = &self.users[(index % self.users.len() as u64) as usize];
        let mut jar = Jar::default();
        let mut url = self.start.clone();
        let mut method = Method::GET;
        let mut body: Option<String> = None;
        // Credentials sent; forms sent after them (consent).
        let mut signed_in = false;
        let mut forms_after = 0;
        let mut followed_start = false;
        for _ in 0..MAX_STEPS {
            if !self.may_go_to(&url) {
                return Err(failed(
                    "sent to a host not allowed (name it with --allow-host)",
                ));
            }
            let mut request = Request::builder()
                .method(method.clone())
                .uri(url.as_str())
                .header(header::ACCEPT, "text/html,application/xhtml+xml")
                .header("sec-fetch-mode", "navigate")
                .header(header::USER_AGENT, "ssogate-bench");
            if let Some(cookie) = jar.header_for(&url) {
                request = request.header(header::COOKIE, cookie);
            }
            if body.is_some() {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            }
            let request = request
                .body(Full::new(Bytes::from(body.take().unwrap_or_default())))
                .map_err(|_| failed("a URL on the way could not be requested"))?;
            let response = client
                .request(request)
                .await
                .map_err(|e| Outcome::of_client_error(&e))?;
            let status = response.status();
            jar.store(&url, response.headers().get_all(header::SET_COOKIE).iter());
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let page = super::read_page(response.into_body()).await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    failed("a page on the way is over 4 MiB")
                } else {
                    Outcome::ConnectionBroken
                }
            })?;
            let page = String::from_utf8_lossy(&page);

            if status.is_redirection() {
                let next = location
                    .and_then(|l| url.join(&l).ok())
                    .ok_or(failed("a redirect without a usable Location"))?;
                url = next;
                method = Method::GET;
                continue;
            }
            let forms = forms(&page);
            let login_form = forms.iter().find(|f| f.has_password());
            if status == StatusCode::UNAUTHORIZED && login_form.is_some() {
                return Err(failed("the provider refused the credentials"));
            }
            if status != StatusCode::OK {
                return Err(Outcome::Status(status.as_u16()));
            }
            let form = match login_form {
                Some(_) if signed_in => {
                    return Err(failed("the provider refused the credentials"));
                }
                Some(form) => {
                    signed_in = true;
                    Some((form, form.fill(Some((user, password)))))
                }
                // A consent (or confirmation) page after the credentials.
                None if signed_in && !forms.is_empty() && !self.is_target(&url) => {
                    forms_after += 1;
                    if forms_after > 3 {
                        return Err(failed("more forms after the login than a consent"));
                    }
                    Some((&forms[0], forms[0].fill(None)))
                }
                None => None,
            };
            if let Some((form, fields)) = form {
                let action = match &form.action {
                    Some(action) if !action.is_empty() => url
                        .join(action)
                        .map_err(|_| failed("a form without a usable action"))?,
                    _ => url.clone(),
                };
                let encoded = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&fields)
                    .finish();
                url = action;
                if form.method == Method::POST {
                    body = Some(encoded);
                    method = Method::POST;
                } else {
                    url.set_query(Some(&encoded));
                    method = Method::GET;
                }
                continue;
            }
            if self.is_target(&url) {
                match (signed_in, start_link(&page)) {
                    (true, None) => return Ok(jar),
                    (true, Some(_)) => {
                        return Err(failed("sent back to the sign-in after the provider"));
                    }
                    // The gateway's sign-in page: on to the provider through its link.
                    (false, Some(link)) if !followed_start => {
                        followed_start = true;
                        url = url
                            .join(&link)
                            .map_err(|_| failed("a sign-in link that is no URL"))?;
                        method = Method::GET;
                        continue;
                    }
                    (false, _) => {
                        return Err(failed("a page without a login (is it protected?)"));
                    }
                }
            }
            return Err(failed("a page at the provider without a login form"));
        }
        Err(failed("more redirects than a login takes"))
    }

    fn is_target(&self, url: &url::Url) -> bool {
        origin_of(url) == origin_of(&self.start) && url.scheme() == self.start.scheme()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The development provider's login form (`src/devidp/pages.rs`).
    const DEVIDP: &str = r#"<p>Sign in to continue to <b>ssogate-demo</b>.</p>
<form method="post" action="http://127.0.0.1:4000/idp/login">
<input type="hidden" name="interaction" value="a&amp;b">
<label>Username <input name="username" autocomplete="username" autofocus required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>"#;

    /// The npm `oidc-provider` test provider's login form (`tests/e2e/provider.mjs`).
    const OIDC_PROVIDER: &str = r#"<main><h1>Sign in</h1>
<form method="post" action="/interaction/x1Y2/login" autocomplete="off">
  <label for="login">Login</label>
  <input id="login" name="login" type="text" value="" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <button type="submit">Sign in</button>
</form></main>"#;

    #[test]
    fn the_login_forms_are_found_and_filled() {
        let found = forms(DEVIDP);
        assert_eq!(found.len(), 1);
        let form = &found[0];
        assert_eq!(form.method, Method::POST);
        assert_eq!(
            form.action.as_deref(),
            Some("http://127.0.0.1:4000/idp/login")
        );
        assert!(form.has_password());
        assert_eq!(
            form.fill(Some(("demo", "pw"))),
            [
                ("interaction".to_owned(), "a&b".to_owned()),
                ("username".to_owned(), "demo".to_owned()),
                ("password".to_owned(), "pw".to_owned())
            ]
        );
        let form = &forms(OIDC_PROVIDER)[0];
        assert_eq!(form.action.as_deref(), Some("/interaction/x1Y2/login"));
        assert_eq!(
            form.fill(Some(("alice", "secret"))),
            [
                ("login".to_owned(), "alice".to_owned()),
                ("password".to_owned(), "secret".to_owned())
            ]
        );
        // A consent form goes as it is.
        let consent = forms(
            "<FORM METHOD=POST action='/i/1/confirm'><input type=hidden name=prompt value=consent>\
             <input type=checkbox name=remember><input type=submit name=go value=Yes></FORM>",
        );
        assert_eq!(
            consent[0].fill(None),
            [
                ("prompt".to_owned(), "consent".to_owned()),
                ("go".to_owned(), "Yes".to_owned())
            ]
        );
        assert_eq!(
            start_link(r#"<p><a class="b" href="/oauth2/start?rd=%2F">Log in</a></p>"#),
            Some("/oauth2/start?rd=%2F".to_owned())
        );
        assert_eq!(
            decode_references("a&#x27;b&#39;c&amp;&bogus"),
            "a'b'c&&bogus"
        );
    }

    #[test]
    fn cookies_go_back_to_their_host_port_and_path() {
        let mut jar = Jar::default();
        let gateway = url::Url::parse("https://127.0.0.1:8443/oauth2/start?rd=%2F").unwrap();
        let provider = url::Url::parse("http://127.0.0.1:4000/interaction/abc").unwrap();
        let set = |text: &str| HeaderValue::from_str(text).unwrap();
        jar.store(
            &gateway,
            [set("__Host-login=l1; Path=/; Secure; HttpOnly")].iter(),
        );
        jar.store(
            &provider,
            [
                set("_interaction=i1; path=/interaction/abc; httponly"),
                set("_session=s1; path=/"),
                set("_old=x; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            ]
            .iter(),
        );
        assert_eq!(
            jar.header_for(&gateway.join("/oauth2/callback").unwrap()),
            Some("__Host-login=l1".into())
        );
        assert_eq!(
            jar.header_for(&provider),
            Some("_interaction=i1; _session=s1".into())
        );
        assert_eq!(
            jar.header_for(&provider.join("/interaction/abcd").unwrap()),
            Some("_session=s1".into()),
            "a path matches at a slash"
        );
        jar.store(&provider, [set("_session=; Max-Age=0; path=/")].iter());
        assert_eq!(
            jar.header_for(&provider.join("/auth").unwrap()),
            None,
            "cleared"
        );
    }

    #[test]
    fn a_pool_of_users_is_read_from_lines() {
        assert_eq!(
            parse_users("# test users\nalice:pa:ss\n\nbob:x\r\n"),
            Ok(vec![
                ("alice".to_owned(), "pa:ss".to_owned()),
                ("bob".to_owned(), "x".to_owned())
            ])
        );
        assert!(parse_users("alice\n").is_err());
        assert!(parse_users("# none\n").is_err());
    }
}
