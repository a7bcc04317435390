use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789";

/// A complete config without TLS (also for other modules' unit tests); ends in
/// `[session]`, so session keys can be appended.
pub(crate) fn minimal() -> String {
    format!(
        r#"
[server]
public_url = "https://sentry.example.com"
[tls]
enabled = false
[upstream]
url = "http://127.0.0.1:9000"
[oidc]
issuer = "https://id.example.com/api/oidc"
client_id = "sentry"
client_secret = "s3cret"
[session]
secrets = ["{SECRET}"]
"#
    )
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::from_toml(text, "test.toml", env)
}

fn problem_for(text: &str, env: &[(&str, &str)]) -> (String, String) {
    match load(text, env).expect_err("config should be refused") {
        ConfigError::Key { key, problem, .. } => (key, problem),
        other => panic!("expected a key error, got {other}"),
    }
}

#[test]
fn the_session_cookie_is_host_only_over_https_and_plain_over_http() {
    let plain = load(
        &minimal().replace("https://sentry.example.com", "http://127.0.0.1:8080"),
        &[],
    )
    .unwrap();
    assert_eq!(plain.session.cookie_name, "_ssogate");
    let chosen = load(&minimal(), &[("SSOGATE_SESSION_COOKIE_NAME", "gate")]).unwrap();
    assert_eq!(chosen.session.cookie_name, "gate");
}

#[test]
fn the_sentry_preset_names_sentrys_session_cookies_and_operators_add_theirs() {
    let none = load(&minimal(), &[]).unwrap();
    assert!(none.access.upstream_session_cookies.is_empty());
    let sentry = load(
        &(minimal()
            + "[access]\npreset = \"sentry\"\nupstream_session_cookies = [\"legacy\", \"sc\"]\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        sentry.access.upstream_session_cookies,
        ["sentrysid", "sc", "sentry-sc", "su", "sudo", "legacy"]
    );
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let s = load(&minimal(), &[]).unwrap();
    assert_eq!(s.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(s.oidc.scopes, ["openid", "email", "profile"]);
    assert_eq!(s.oidc.provider_name, "Encvoy ID");
    assert_eq!(s.oidc.callback_path, "/oauth2/callback");
    assert_eq!(s.session.cookie_name, "__Host-ssogate");
    assert_eq!(s.identity_headers.user.unwrap(), "x-forwarded-user");
    assert_eq!(s.access.groups_claim, "groups");
    assert!(s.access.require_email_verified);
    assert!(s.upstream.read_timeout >= Duration::from_secs(95));
    assert_eq!(s.upstream.max_in_flight, 512);
    assert_eq!(s.upstream.max_in_flight_per_client, 64);
    assert_eq!(s.server.send_timeout, Duration::from_secs(30));
    assert_eq!(s.server.body_idle_timeout, Duration::from_secs(30));
}

/// The minimal config with `oidc.skip_sign_in_page = <value>` (TOML as written).
fn skipping_sign_in_page(value: &str) -> String {
    minimal().replace(
        "client_secret = \"s3cret\"",
        &format!("client_secret = \"s3cret\"\nskip_sign_in_page = {value}"),
    )
}

#[test]
fn skip_sign_in_page_takes_false_true_or_returning_from_file_or_environment() {
    assert_eq!(
        load(&minimal(), &[]).unwrap().oidc.skip_sign_in_page,
        SkipSignInPage::Returning,
        "the default"
    );
    for (value, expected) in [
        ("false", SkipSignInPage::Never),
        ("true", SkipSignInPage::Always),
        ("\"returning\"", SkipSignInPage::Returning),
        ("\"Returning\"", SkipSignInPage::Returning),
    ] {
        let settings = load(&skipping_sign_in_page(value), &[]).unwrap();
        assert_eq!(settings.oidc.skip_sign_in_page, expected, "{value}");
    }
    for (value, expected) in [
        ("off", SkipSignInPage::Never),
        ("yes", SkipSignInPage::Always),
        ("returning", SkipSignInPage::Returning),
    ] {
        let settings = load(&minimal(), &[("SSOGATE_OIDC_SKIP_SIGN_IN_PAGE", value)]).unwrap();
        assert_eq!(settings.oidc.skip_sign_in_page, expected, "{value}");
    }
}

#[test]
fn a_wrong_skip_sign_in_page_names_the_key_and_the_three_choices() {
    let choices = "is not one of false (always the sign-in page), true (never the page) or \
                   \"returning\" (the page only for a browser that has not signed in here before)";
    let text = skipping_sign_in_page("\"sometimes\"");
    assert_eq!(
        all_problems(&text, &[]),
        [format!("oidc.skip_sign_in_page: `sometimes` {choices}")]
    );
    assert_eq!(
        all_problems(&minimal(), &[("SSOGATE_OIDC_SKIP_SIGN_IN_PAGE", "return")]),
        [format!(
            "oidc.skip_sign_in_page (set by environment variable SSOGATE_OIDC_SKIP_SIGN_IN_PAGE): \
             `return` {choices}"
        )]
    );
    let text = skipping_sign_in_page("1");
    assert_eq!(
        all_problems(&text, &[]),
        ["oidc.skip_sign_in_page: expected true, false or \"returning\", found a number"]
    );
}

#[test]
fn encvoy_plugin_variables_are_accepted() {
    let text = minimal().replace("issuer = \"https://id.example.com/api/oidc\"\n", "");
    let s = load(
        &text,
        &[
            ("OIDC_DOMAIN", "https://id.corp.example/api/oidc"),
            ("OIDC_CLIENT_ID", "from-env"),
            ("OIDC_SCOPE", "openid email profile offline_access"),
        ],
    )
    .unwrap();
    assert_eq!(s.oidc.issuer, "https://id.corp.example/api/oidc");
    assert_eq!(s.oidc.client_id, "from-env");
    assert_eq!(s.oidc.scopes.len(), 4);
}

#[test]
fn ssogate_variables_override_file_and_plugin_names() {
    let s = load(
        &minimal(),
        &[
            ("OIDC_CLIENT_ID", "plugin"),
            ("SSOGATE_OIDC_CLIENT_ID", "own"),
            ("SSOGATE_SESSION_MAX_SESSIONS", "42"),
            ("SSOGATE_IDENTITY_HEADERS_USER", "Remote-User"),
            (
                "SSOGATE_ACCESS_ALLOWED_EMAIL_DOMAINS",
                "Corp.example, @other.example",
            ),
            ("SSOGATE_ACCESS_REQUIRE_EMAIL_VERIFIED", "false"),
        ],
    )
    .unwrap();
    assert_eq!(s.oidc.client_id, "own");
    assert_eq!(s.session.max_sessions, 42);
    assert_eq!(s.identity_headers.user.unwrap(), "remote-user");
    assert_eq!(
        s.access.allowed_email_domains,
        ["corp.example", "other.example"]
    );
    assert!(!s.access.require_email_verified);
}

#[test]
fn secrets_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("client");
    let session = dir.path().join("session");
    std::fs::write(&client, "from-file\n").unwrap();
    std::fs::write(&session, format!("{SECRET}new\n{SECRET}old\n")).unwrap();
    let text = minimal()
        .replace(
            "client_secret = \"s3cret\"",
            &format!("client_secret_file = {:?}", client),
        )
        .replace(
            &format!("secrets = [\"{SECRET}\"]"),
            &format!("secret_file = {:?}", session),
        );
    let s = load(&text, &[]).unwrap();
    assert_eq!(s.oidc.client_secret, "from-file");
    assert_eq!(
        s.session.secrets,
        [format!("{SECRET}new"), format!("{SECRET}old")]
    );
}

#[test]
fn mistakes_name_the_key() {
    // (config text, environment, key named, fragment of the problem)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            minimal().replace("https://sentry.example.com", "sentry.example.com"),
            vec![],
            "server.public_url",
            "not a URL",
        ),
        (
            minimal().replace("https://sentry.example.com", "http://sentry.example.com"),
            vec![],
            "server.public_url",
            "https",
        ),
        (
            minimal().replace(
                "https://sentry.example.com",
                "https://sentry.example.com/app",
            ),
            vec![],
            "server.public_url",
            "origin only",
        ),
        (
            minimal().replace("http://127.0.0.1:9000", "ftp://x"),
            vec![],
            "upstream.url",
            "http",
        ),
        (
            minimal().replace(SECRET, "short"),
            vec![],
            "session.secrets",
            "shorter than 32",
        ),
        (
            minimal().replace("enabled = false", "enabled = \"maybe\""),
            vec![],
            "tls.enabled",
            "maybe",
        ),
        (
            minimal().replace("enabled = false", ""),
            vec![],
            "tls.cert_file",
            "missing",
        ),
        (
            minimal().replace("[upstream]", "[upstream]\nread_timout = \"5s\""),
            vec![],
            "upstream.read_timout",
            "did you mean upstream.read_timeout?",
        ),
        (
            minimal(),
            vec![("SSOGATE_UPSTREAM_READ_TIMEOUT", "soon")],
            "upstream.read_timeout",
            "not a duration",
        ),
        (
            minimal(),
            vec![("SSOGATE_UPSTREAM_MAX_IN_FLIGHT", "0")],
            "upstream.max_in_flight",
            "at least 1",
        ),
        (
            minimal(),
            vec![
                ("SSOGATE_UPSTREAM_MAX_IN_FLIGHT", "10"),
                ("SSOGATE_UPSTREAM_MAX_IN_FLIGHT_PER_CLIENT", "11"),
            ],
            "upstream.max_in_flight_per_client",
            "at most upstream.max_in_flight",
        ),
        (
            minimal(),
            vec![("SSOGATE_SERVER_SEND_TIMEOUT", "0s")],
            "server.send_timeout",
            "longer than zero",
        ),
        (
            minimal(),
            vec![("SSOGATE_SERVER_BODY_IDLE_TIMEOUT", "0s")],
            "server.body_idle_timeout",
            "longer than zero",
        ),
        (
            minimal(),
            vec![("SSOGATE_SERVER_LISTEN", "8443")],
            "server.listen",
            "not an address",
        ),
        (
            minimal(),
            vec![("SSOGATE_SERVER_TRUSTED_PROXIES", "10.0.0.0/8,bogus")],
            "server.trusted_proxies",
            "bogus",
        ),
        (
            minimal(),
            vec![("SSOGATE_SERVR_LISTEN", "x")],
            "SSOGATE_SERVR_LISTEN",
            "no such section",
        ),
        (
            minimal(),
            vec![("SSOGATE_OIDC_SCOPES", "email profile")],
            "oidc.scopes",
            "openid",
        ),
        (
            minimal(),
            vec![("SSOGATE_SESSION_COOKIE_NAME", "sentrysid")],
            "session.cookie_name",
            "Sentry",
        ),
        (
            minimal().replace("https://sentry.example.com", "http://127.0.0.1:8080"),
            vec![("SSOGATE_SESSION_COOKIE_NAME", "__Host-gate")],
            "session.cookie_name",
            "only over https",
        ),
        (
            minimal(),
            vec![("SSOGATE_ACCESS_UPSTREAM_SESSION_COOKIES", "ok, bad;name")],
            "access.upstream_session_cookies",
            "not a cookie name",
        ),
        (
            minimal() + "[access]\npreset = \"sentry\"\n",
            vec![("SSOGATE_SESSION_COOKIE_NAME", "sudo")],
            "session.cookie_name",
            "upstream's session cookies",
        ),
        (
            minimal(),
            vec![("SSOGATE_OIDC_CALLBACK_PATH", "/auth/sso/")],
            "oidc.callback_path",
            "sentry-auth-oidc",
        ),
        (
            minimal(),
            vec![("SSOGATE_IDENTITY_HEADERS_EMAIL", "Bad Header")],
            "identity_headers.email",
            "not a valid header",
        ),
        (
            minimal(),
            vec![("SSOGATE_OIDC_CA_FILE", "/nonexistent/ca.pem")],
            "oidc.ca_file",
            "does not exist",
        ),
        (
            minimal().replace("client_id = \"sentry\"", ""),
            vec![],
            "oidc.client_id",
            "missing",
        ),
        (
            format!("{}\n[extra]\nx = 1", minimal()),
            vec![],
            "extra",
            "unknown section",
        ),
    ];
    for (text, env, key, fragment) in cases {
        let (got_key, problem) = problem_for(&text, &env);
        assert_eq!(got_key, key, "wrong key for problem `{problem}`");
        assert!(
            problem.contains(fragment),
            "problem for {key} was `{problem}`, expected it to mention `{fragment}`"
        );
    }
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let err = load("[server\npublic_url = 1", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("test.toml"), "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn the_example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/ssogate.example.toml"
    ))
    .unwrap();
    // Its certificate paths and secrets are placeholders; everything else must load
    // as written.
    let s = load(
        &text,
        &[
            ("SSOGATE_TLS_ENABLED", "false"),
            ("SSOGATE_SESSION_SECRETS", SECRET),
            ("OIDC_CLIENT_SECRET", "the-real-client-secret"),
        ],
    )
    .unwrap();
    assert_eq!(s.access.groups_claim, "permissions");
    assert_eq!(
        s.server.http_redirect_listen,
        Some("0.0.0.0:8080".parse().unwrap())
    );
}

#[test]
fn the_example_config_as_written_is_refused_naming_each_secret_to_fill_in() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/ssogate.example.toml"
    ))
    .unwrap();
    let err = load(&text, &[("SSOGATE_TLS_ENABLED", "false")]).unwrap_err();
    let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "oidc.client_secret: is the example config's placeholder: fill in the Client secret of the application registered at the provider",
            "session.secrets: secret #1 is the example config's placeholder: fill in the output of `ssogate gen-secret`",
        ]
    );
}

#[test]
fn the_sentry_config_is_valid_and_turns_the_preset_on() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sentry.toml"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let text = text
        .replace("/etc/ssogate/oidc-client-secret", secret.to_str().unwrap())
        .replace("/etc/ssogate/session-secret", secret.to_str().unwrap());
    let s = load(&text, &[("SSOGATE_TLS_ENABLED", "false")]).unwrap();
    assert_eq!(s.access.preset.as_deref(), Some("sentry"));
    assert_eq!(
        s.access.rules[0].name, "Sentry admin",
        "operator rules come first"
    );
    assert!(s.access.rules.len() > 10);
}

#[test]
fn rule_mistakes_name_the_rule_and_key() {
    let with_rule = |rule: &str| format!("{}\n[access]\n[[access.rules]]\n{rule}\n", minimal());
    for (rule, key, fragment) in [
        (
            "path = \"^/(unclosed\"",
            "access.rules[0].path",
            "not a regular expression",
        ),
        ("name = \"x\"", "access.rules[0].path", "missing"),
        (
            "path = \"^/\"\naction = \"allow\"",
            "access.rules[0].action",
            "public",
        ),
        (
            "path = \"^/\"\naction = \"public\"\nallowed_groups = [\"a\"]",
            "access.rules[0].action",
            "cannot have",
        ),
        (
            "path = \"^/\"\nmethods = [\"G T\"]",
            "access.rules[0].methods",
            "not an HTTP method",
        ),
        (
            "path = \"^/\"\nwhen_header = \"a b\"",
            "access.rules[0].when_header",
            "not a header name",
        ),
        (
            "path = \"^/\"\nallowed_groupz = [\"a\"]",
            "access.rules[0].allowed_groupz",
            "did you mean access.rules[0].allowed_groups?",
        ),
    ] {
        let (got_key, problem) = problem_for(&with_rule(rule), &[]);
        assert_eq!(got_key, key, "{rule}: {problem}");
        assert!(problem.contains(fragment), "{rule}: {problem}");
    }
    let (key, _) = problem_for(
        &format!("{}\n[access]\npreset = \"jira\"\n", minimal()),
        &[],
    );
    assert_eq!(key, "access.preset");
}

#[test]
fn the_redis_store_is_configured_from_file_or_environment() {
    let s = load(&minimal(), &[]).unwrap();
    assert!(matches!(s.session.store, StoreSettings::Memory));
    let s = load(
        &minimal(),
        &[
            ("SSOGATE_SESSION_STORE", "redis"),
            (
                "SSOGATE_SESSION_REDIS_URL",
                "rediss://:hunter2@redis.internal:6380/2",
            ),
            ("SSOGATE_SESSION_LOCAL_CACHE_TTL", "10s"),
        ],
    )
    .unwrap();
    let StoreSettings::Redis(redis) = &s.session.store else {
        panic!("expected the redis store");
    };
    assert_eq!(redis.url.port(), Some(6380));
    assert_eq!(redis.key_prefix, "ssogate:");
    assert_eq!(redis.timeout, Duration::from_secs(1));
    assert_eq!(redis.local_cache_ttl, Duration::from_secs(10));
    let shown = format!("{redis:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("redis.internal"),
        "{shown}"
    );

    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("redis-url");
    std::fs::write(&url_file, "redis://:pw@127.0.0.1:6379/0\n").unwrap();
    let text = format!(
        "{}store = \"redis\"\nredis_url_file = \"{}\"\n",
        minimal(),
        url_file.display()
    );
    let s = load(&text, &[]).unwrap();
    let StoreSettings::Redis(redis) = &s.session.store else {
        panic!("expected the redis store");
    };
    assert_eq!(redis.url.password(), Some("pw"));
}

#[test]
fn redis_mistakes_name_the_key() {
    let redis = |extra: &str| format!("{}store = \"redis\"\n{extra}\n", minimal());
    let cases = [
        (redis(""), "session.redis_url", "missing"),
        (
            format!("{}store = \"postgres\"\n", minimal()),
            "session.store",
            "\"memory\"",
        ),
        (
            format!("{}redis_url = \"redis://127.0.0.1\"\n", minimal()),
            "session.redis_url",
            "session.store = \"redis\"",
        ),
        (
            redis("redis_url = \"http://127.0.0.1:6379\""),
            "session.redis_url",
            "redis://",
        ),
        (
            redis("redis_url = \"redis://127.0.0.1:6379/sessions\""),
            "session.redis_url",
            "database number",
        ),
        (
            redis(concat!(
                "redis_url = \"redis://127.0.0.1\"\nredis_ca_file = \"",
                env!("CARGO_MANIFEST_DIR"),
                "/Cargo.toml\""
            )),
            "session.redis_ca_file",
            "rediss://",
        ),
        (
            redis("redis_url = \"redis://127.0.0.1\"\nredis_timeout = \"0s\""),
            "session.redis_timeout",
            "longer than zero",
        ),
        (
            redis("redis_url = \"redis://127.0.0.1\"\nlocal_cache_ttl = \"soon\""),
            "session.local_cache_ttl",
            "soon",
        ),
    ];
    for (text, key, fragment) in cases {
        let (got_key, problem) = problem_for(&text, &[]);
        assert_eq!(got_key, key, "wrong key for problem `{problem}`");
        assert!(
            problem.contains(fragment),
            "problem for {key} was `{problem}`, expected it to mention `{fragment}`"
        );
    }
}

#[test]
fn sentinels_are_configured_from_file_or_environment() {
    let s = load(
        &minimal(),
        &[
            ("SSOGATE_SESSION_STORE", "redis"),
            (
                "SSOGATE_SESSION_REDIS_SENTINELS",
                "10.0.0.1:26379, [fd00::2]:26380",
            ),
            ("SSOGATE_SESSION_REDIS_MASTER_NAME", "sessions"),
            ("SSOGATE_SESSION_REDIS_SENTINEL_PASSWORD", "sentinel-pw"),
        ],
    )
    .unwrap();
    let StoreSettings::Redis(redis) = &s.session.store else {
        panic!("expected the redis store");
    };
    let sentinel = redis.sentinel.as_ref().expect("sentinel settings");
    assert_eq!(
        sentinel.addresses,
        [
            ("10.0.0.1".to_owned(), 26379),
            ("fd00::2".to_owned(), 26380)
        ]
    );
    assert_eq!(sentinel.master_name, "sessions");
    assert_eq!(sentinel.password.as_deref(), Some("sentinel-pw"));
    assert_eq!(redis.url.as_str(), "redis://sessions/0");
    assert!(!format!("{redis:?}").contains("sentinel-pw"));

    let text = format!(
        "{}store = \"redis\"\nredis_sentinels = [\"127.0.0.1:26379\"]\n\
         redis_master_name = \"sessions\"\nredis_url = \"rediss://:data-pw@sessions/3\"\n",
        minimal()
    );
    let s = load(&text, &[]).unwrap();
    let StoreSettings::Redis(redis) = &s.session.store else {
        panic!("expected the redis store");
    };
    assert_eq!(redis.url.password(), Some("data-pw"));
    assert_eq!(redis.url.scheme(), "rediss");
    assert_eq!(redis.sentinel.as_ref().unwrap().password, None);
}

#[test]
fn sentinel_mistakes_name_the_key() {
    let sentinels = |extra: &str| {
        format!(
            "{}store = \"redis\"\nredis_sentinels = [\"127.0.0.1:26379\"]\n{extra}\n",
            minimal()
        )
    };
    let cases = [
        (sentinels(""), "session.redis_master_name", "missing"),
        (
            sentinels("redis_master_name = \"a b\""),
            "session.redis_master_name",
            "spaces",
        ),
        (
            format!(
                "{}store = \"redis\"\nredis_sentinels = [\"127.0.0.1\"]\nredis_master_name = \"m\"\n",
                minimal()
            ),
            "session.redis_sentinels",
            "host:port",
        ),
        (
            format!(
                "{}store = \"redis\"\nredis_sentinels = []\nredis_master_name = \"m\"\n",
                minimal()
            ),
            "session.redis_sentinels",
            "empty",
        ),
        (
            sentinels("redis_master_name = \"m\"\nredis_url = \"redis://127.0.0.1:6379/0\""),
            "session.redis_url",
            "redis://:password@m/0",
        ),
        (
            format!(
                "{}store = \"redis\"\nredis_url = \"redis://127.0.0.1\"\nredis_master_name = \"m\"\n",
                minimal()
            ),
            "session.redis_master_name",
            "session.redis_sentinels",
        ),
        (
            format!("{}redis_sentinels = [\"127.0.0.1:26379\"]\n", minimal()),
            "session.redis_sentinels",
            "session.store = \"redis\"",
        ),
        (
            sentinels(
                "redis_master_name = \"m\"\nredis_sentinel_password = \"a\"\nredis_sentinel_password_file = \"/x\"",
            ),
            "session.redis_sentinel_password_file",
            "not both",
        ),
    ];
    for (text, key, fragment) in cases {
        let (got_key, problem) = problem_for(&text, &[]);
        assert_eq!(got_key, key, "wrong key for problem `{problem}`");
        assert!(
            problem.contains(fragment),
            "problem for {key} was `{problem}`, expected it to mention `{fragment}`"
        );
    }
}

#[test]
fn cluster_nodes_are_configured_from_file_or_environment() {
    let s = load(
        &minimal(),
        &[
            ("SSOGATE_SESSION_STORE", "redis"),
            (
                "SSOGATE_SESSION_REDIS_CLUSTER_NODES",
                "redis://:data-pw@10.0.0.1:6379, redis://:data-pw@10.0.0.2:6380",
            ),
        ],
    )
    .unwrap();
    let StoreSettings::Redis(redis) = &s.session.store else {
        panic!("expected the redis store");
    };
    let nodes = redis.cluster_nodes.as_ref().expect("cluster nodes");
    assert_eq!(
        nodes.iter().map(|url| url.port()).collect::<Vec<_>>(),
        [Some(6379), Some(6380)]
    );
    assert_eq!(redis.url, nodes[0]);
    assert_eq!(redis.sentinel, None);
    assert!(!format!("{redis:?}").contains("data-pw"));

    let text = format!(
        "{}store = \"redis\"\nredis_cluster_nodes = [\"rediss://10.0.0.1:6379/0\"]\n",
        minimal()
    );
    let s = load(&text, &[]).unwrap();
    let StoreSettings::Redis(redis) = &s.session.store else {
        panic!("expected the redis store");
    };
    assert_eq!(redis.url.scheme(), "rediss");
}

#[test]
fn cluster_mistakes_name_the_key() {
    let cluster = |nodes: &str, extra: &str| {
        format!(
            "{}store = \"redis\"\nredis_cluster_nodes = [{nodes}]\n{extra}\n",
            minimal()
        )
    };
    let cases = [
        (cluster("", ""), "session.redis_cluster_nodes", "empty"),
        (
            cluster("\"10.0.0.1:6379\"", ""),
            "session.redis_cluster_nodes",
            "redis://",
        ),
        (
            cluster("\"redis://10.0.0.1:6379/2\"", ""),
            "session.redis_cluster_nodes",
            "only database 0",
        ),
        (
            cluster("\"redis://10.0.0.1:6379\", \"rediss://10.0.0.2:6379\"", ""),
            "session.redis_cluster_nodes",
            "same scheme",
        ),
        (
            cluster(
                "\"redis://:a@10.0.0.1:6379\", \"redis://:b@10.0.0.2:6379\"",
                "",
            ),
            "session.redis_cluster_nodes",
            "same user and password",
        ),
        (
            cluster(
                "\"redis://10.0.0.1:6379\"",
                "redis_url = \"redis://10.0.0.1:6379/0\"",
            ),
            "session.redis_cluster_nodes",
            "without session.redis_url",
        ),
        (
            cluster(
                "\"redis://10.0.0.1:6379\"",
                "redis_sentinels = [\"10.0.0.1:26379\"]\nredis_master_name = \"m\"",
            ),
            "session.redis_cluster_nodes",
            "session.redis_sentinels",
        ),
        (
            format!(
                "{}redis_cluster_nodes = [\"redis://10.0.0.1:6379\"]\n",
                minimal()
            ),
            "session.redis_cluster_nodes",
            "session.store = \"redis\"",
        ),
    ];
    for (text, key, fragment) in cases {
        let (got_key, problem) = problem_for(&text, &[]);
        assert_eq!(got_key, key, "wrong key for problem `{problem}`");
        assert!(
            problem.contains(fragment),
            "problem for {key} was `{problem}`, expected it to mention `{fragment}`"
        );
    }
}

#[test]
fn serving_threads_default_to_the_cores_and_must_be_positive() {
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(load(&minimal(), &[]).unwrap().server.threads, cores);
    let s = load(&minimal(), &[("SSOGATE_SERVER_THREADS", "3")]).unwrap();
    assert_eq!(s.server.threads, 3);
    let (key, problem) = problem_for(&minimal(), &[("SSOGATE_SERVER_THREADS", "0")]);
    assert_eq!(key, "server.threads");
    assert!(problem.contains("at least 1"), "{problem}");
}

#[test]
fn a_syntax_error_names_the_place_but_never_quotes_the_line() {
    let text =
        "[oidc]\nissuer = \"https://id.example.com\"\nclient_secret = \"s3cret-value-1234\" x\n";
    let error = Settings::from_toml(text, "ssogate.toml", std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(error.contains("ssogate.toml"), "{error}");
    assert!(error.contains("line 3"), "{error}");
    assert!(!error.contains("s3cret-value-1234"), "{error}");
}

#[test]
fn host_aliases_are_bare_host_names_or_addresses() {
    assert!(
        load(&minimal(), &[])
            .unwrap()
            .server
            .host_aliases
            .is_empty()
    );
    let s = load(
        &minimal(),
        &[(
            "SSOGATE_SERVER_HOST_ALIASES",
            "Sentry.Internal, 192.0.2.10 [2001:DB8::1] 2001:db8::2 old.example.com.",
        )],
    )
    .unwrap();
    assert_eq!(
        s.server.host_aliases,
        [
            "sentry.internal",
            "192.0.2.10",
            "[2001:db8::1]",
            "[2001:db8::2]",
            "old.example.com"
        ]
    );
    for bad in [
        "https://sentry.internal",
        "sentry.internal:8443",
        "192.0.2.10:443",
        "sentry.internal/path",
        "*.example.com",
        "user@sentry.internal",
        "bad host",
        "[::1]:443",
    ] {
        let text = minimal().replace("[tls]", &format!("host_aliases = [{:?}]\n[tls]", bad));
        let (key, problem) = problem_for(&text, &[]);
        assert_eq!(key, "server.host_aliases", "{bad}");
        assert!(problem.contains(bad), "{bad}: {problem}");
    }
}

/// Every problem of a refused config, as `key: problem` lines.
fn all_problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    load(text, env)
        .expect_err("config should be refused")
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_mistyped_value_names_its_full_key_and_what_was_expected() {
    let text = minimal()
        .replace("[session]", "[session]\nlifetime = true")
        .replace("[server]", "[server]\nlisten = 8443");
    let problems = all_problems(&text, &[]);
    assert_eq!(
        problems,
        [
            "server.listen: expected a string, found a number (an address with its port, in quotes: \"0.0.0.0:8443\")",
            "session.lifetime: expected a string such as \"30s\", found true/false",
        ]
    );
}

#[test]
fn every_mistake_of_a_file_is_reported_in_one_run() {
    let text = minimal()
        .replace("[server]", "[server]\nlisen = \"0.0.0.0:8443\"")
        .replace("client_id = \"sentry\"", "")
        .replace("url = \"http://127.0.0.1:9000\"", "url = \"ftp://x\"")
        + "[access]\n[[access.rules]]\npath = \"(\"\n[[access.rules]]\npath = \"^/\"\naction = \"allow\"\n";
    let problems = all_problems(&text, &[]);
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "server.lisen",
            "upstream.url",
            "oidc.client_id",
            "access.rules[0].path",
            "access.rules[1].action",
        ],
        "{problems:#?}"
    );
    assert!(
        problems[0].ends_with("did you mean server.listen?"),
        "{}",
        problems[0]
    );
    let joined = load(&text, &[]).unwrap_err().to_string();
    assert!(joined.starts_with("5 problems: server.lisen"), "{joined}");
}

#[test]
fn a_single_bracket_rule_table_asks_for_two() {
    let text = minimal() + "[access.rules]\npath = \"^/admin/\"\n";
    assert_eq!(
        all_problems(&text, &[]),
        [
            "access.rules: write [[access.rules]] (two brackets) above each rule: [access.rules] \
          with one bracket is a single table, not a list of rules"
        ]
    );
}

#[test]
fn a_key_in_the_wrong_section_names_the_right_one() {
    let text = minimal().replace(
        "[server]",
        "[server]\ncert_file = \"/etc/ssogate/cert.pem\"",
    );
    assert_eq!(
        all_problems(&text, &[]),
        [
            "server.cert_file: is not a key of [server]; it belongs in [tls] (a key belongs to the \
          [section] line above it)"
        ]
    );
    // The classic: an [access] key written below a rule belongs to the rule.
    let text =
        minimal() + "[access]\n[[access.rules]]\npath = \"^/\"\nrequire_email_verified = false\n";
    let problems = all_problems(&text, &[]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "access.rules[0].require_email_verified: is not a key of a rule; it belongs in [access] \
             (keys below a [[access.rules]] line belong to that rule"
        ),
        "{}",
        problems[0]
    );
    // A key above every section header.
    let text = format!("public_url = \"https://x.example\"\n{}", minimal());
    assert_eq!(
        all_problems(&text, &[]),
        [
            "public_url: is not in a section; it is a key of [server]: write it below that [section] line"
        ]
    );
    let text = minimal() + "[sesion]\nlifetime = \"1h\"\n";
    assert_eq!(
        all_problems(&text, &[]),
        ["sesion: unknown section; did you mean [session]?"]
    );
}

#[test]
fn a_value_from_the_environment_names_its_variable() {
    let problems = all_problems(
        &minimal(),
        &[
            ("SSOGATE_SESSION_LIFETIME", "forever"),
            ("SSOGATE_SERVER_LISTN", "0.0.0.0:1"),
            ("OIDC_DOMAIN", "id.example.com"),
        ],
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert_eq!(
        problems[0],
        "server.listn (set by environment variable SSOGATE_SERVER_LISTN): unknown key; did you mean server.listen?"
    );
    assert!(
        problems[1].starts_with(
            "oidc.issuer (set by environment variable OIDC_DOMAIN): `id.example.com` is not a URL"
        ),
        "{}",
        problems[1]
    );
    assert_eq!(
        problems[2],
        "session.lifetime (set by environment variable SSOGATE_SESSION_LIFETIME): `forever` is not \
         a duration (examples: 30s, 5m, 24h, 1500ms)"
    );
    // A file value is not attributed to a variable.
    let problems = all_problems(&minimal().replace("s3cret", ""), &[]);
    assert_eq!(problems, ["oidc.client_secret: is empty"]);
}

#[test]
fn settings_record_which_keys_the_environment_set() {
    let s = load(
        &minimal(),
        &[
            ("OIDC_DOMAIN", "https://stray.example/api/oidc"),
            ("SSOGATE_OIDC_CLIENT_ID", "own"),
            ("OIDC_CLIENT_ID", "plugin"),
            ("SSOGATE_SESSION_MAX_SESSIONS", "42"),
        ],
    )
    .unwrap();
    let mut set: Vec<(&str, &str, bool)> = s
        .from_environment
        .iter()
        .map(|f| (f.key.as_str(), f.variable.as_str(), f.overrides_file))
        .collect();
    set.sort();
    assert_eq!(
        set,
        [
            ("oidc.client_id", "SSOGATE_OIDC_CLIENT_ID", true),
            ("oidc.issuer", "OIDC_DOMAIN", true),
            (
                "session.max_sessions",
                "SSOGATE_SESSION_MAX_SESSIONS",
                false
            ),
        ]
    );
}

#[test]
fn an_empty_secret_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("client_secret");
    std::fs::write(&empty, "\n").unwrap();
    let text = minimal().replace(
        "client_secret = \"s3cret\"",
        &format!("client_secret_file = {:?}", empty),
    );
    assert_eq!(
        all_problems(&text, &[]),
        [format!(
            "oidc.client_secret_file: the file `{}` is empty",
            empty.display()
        )]
    );
}

#[test]
fn a_discovery_url_given_as_the_issuer_names_the_issuer_to_write() {
    let problems = all_problems(
        &minimal(),
        &[(
            "OIDC_DOMAIN",
            "https://id.example.com/api/oidc/.well-known/openid-configuration",
        )],
    );
    assert_eq!(
        problems,
        ["oidc.issuer (set by environment variable OIDC_DOMAIN): \
          `https://id.example.com/api/oidc/.well-known/openid-configuration` is the discovery \
          document's URL; oidc.issuer is the part before /.well-known/openid-configuration: \
          https://id.example.com/api/oidc"]
    );
}

#[test]
fn a_file_the_user_may_not_reach_is_not_called_missing() {
    let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    let problem = missing_file(
        "tls.key_file",
        "/etc/letsencrypt/live/x/privkey.pem",
        &denied,
    );
    assert_eq!(
        problem.to_string(),
        "tls.key_file: `/etc/letsencrypt/live/x/privkey.pem` cannot be reached by this user \
         (permission denied); the service user must be able to read it: check with \
         sudo -u ssogate ssogate check"
    );
    let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
    assert!(
        missing_file("tls.key_file", "/x", &gone)
            .to_string()
            .contains("does not exist")
    );
}

#[test]
fn the_example_config_shows_every_key_the_code_accepts_and_no_other() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/ssogate.example.toml"
    ))
    .unwrap();
    let key_line = regex::Regex::new(r"^#? ?([a-z_0-9]+) *=").unwrap();
    let mut section = String::new();
    let mut shown = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix("[[").or_else(|| line.strip_prefix('[')) {
            section = header.trim_end_matches(']').to_owned();
        } else if let Some(key) = key_line.captures(line) {
            shown.push((section.clone(), key[1].to_owned()));
        }
    }
    let accepted: Vec<(String, String)> = all_keys()
        .into_iter()
        .filter(|(section, key)| !(*section == "access" && *key == "rules"))
        .map(|(section, key)| (section.to_owned(), key.to_owned()))
        .collect();
    let missing: Vec<_> = accepted.iter().filter(|k| !shown.contains(k)).collect();
    let unknown: Vec<_> = shown.iter().filter(|k| !accepted.contains(k)).collect();
    assert!(missing.is_empty(), "not in the example: {missing:?}");
    assert!(
        unknown.is_empty(),
        "in the example but not accepted: {unknown:?}"
    );
}

#[test]
fn the_acme_webroot_is_a_directory_served_by_the_plain_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let webroot = dir.path().display().to_string();
    let with = |extra: &str| minimal().replace("[server]\n", &format!("[server]\n{extra}\n"));

    let text = with(&format!(
        "http_redirect_listen = \"0.0.0.0:80\"\nacme_webroot = \"{webroot}\""
    ));
    let settings = load(&text, &[]).unwrap();
    assert_eq!(settings.server.acme_webroot.as_deref(), Some(dir.path()));

    let (key, problem) = problem_for(&with(&format!("acme_webroot = \"{webroot}\"")), &[]);
    assert_eq!(key, "server.acme_webroot");
    assert!(problem.contains("server.http_redirect_listen"), "{problem}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let text = with(&format!(
        "http_redirect_listen = \"0.0.0.0:80\"\nacme_webroot = \"{}\"",
        file.display()
    ));
    let (key, problem) = problem_for(&text, &[]);
    assert_eq!(key, "server.acme_webroot");
    assert!(problem.contains("is not a directory"), "{problem}");
}

#[test]
fn the_assertion_is_off_without_a_key_file_and_on_with_defaults_with_one() {
    assert!(load(&minimal(), &[]).unwrap().assertion.is_none());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("assertion.pem");
    std::fs::write(&key, "a key").unwrap();
    let key = key.display().to_string();
    let on = load(&minimal(), &[("SSOGATE_ASSERTION_KEY_FILE", &key)]).unwrap();
    let assertion = on.assertion.expect("on");
    assert_eq!(assertion.header.as_str(), DEFAULT_ASSERTION_HEADER);
    assert_eq!(
        assertion.audience, "http://127.0.0.1:9000",
        "the upstream's origin"
    );
    assert_eq!(assertion.lifetime, Duration::from_secs(300));
    assert!(assertion.previous_key_files.is_empty());

    let text = format!(
        "{}[assertion]\nkey_file = \"{key}\"\nprevious_key_files = [\"{key}\"]\n\
         header = \"X-Signed-Identity\"\naudience = \"sentry\"\nlifetime = \"90s\"\n",
        minimal()
    );
    let assertion = load(&text, &[]).unwrap().assertion.unwrap();
    assert_eq!(assertion.header.as_str(), "x-signed-identity");
    assert_eq!(assertion.audience, "sentry");
    assert_eq!(assertion.lifetime, Duration::from_secs(90));
    assert_eq!(assertion.previous_key_files.len(), 1);
}

#[test]
fn assertion_mistakes_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("assertion.pem");
    std::fs::write(&key, "a key").unwrap();
    let with = |keys: &str| format!("{}[assertion]\n{keys}\n", minimal());
    let key_line = format!("key_file = \"{}\"", key.display());
    for (keys, expected_key, fragment) in [
        (
            "header = \"X-A\"".to_owned(),
            "assertion.header",
            "assertion.key_file",
        ),
        (
            "lifetime = \"1m\"".to_owned(),
            "assertion.lifetime",
            "assertion.key_file",
        ),
        (
            "key_file = \"/nonexistent/key.pem\"".to_owned(),
            "assertion.key_file",
            "does not exist",
        ),
        (
            format!("{key_line}\nprevious_key_files = [\"/nonexistent/old.pem\"]"),
            "assertion.previous_key_files",
            "does not exist",
        ),
        (
            format!("{key_line}\nlifetime = \"0s\""),
            "assertion.lifetime",
            "between 1s and 1h",
        ),
        (
            format!("{key_line}\nlifetime = \"2h\""),
            "assertion.lifetime",
            "between 1s and 1h",
        ),
        (
            format!("{key_line}\nheader = \"\""),
            "assertion.header",
            "is empty",
        ),
        (
            format!("{key_line}\nheader = \"Cookie\""),
            "assertion.header",
            "manages itself",
        ),
        (
            format!("{key_line}\nheader = \"x_forwarded_user\""),
            "assertion.header",
            "identity header",
        ),
        (
            format!("{key_line}\naudience = \" \""),
            "assertion.audience",
            "is empty",
        ),
        (
            format!("{key_line}\nkey_fle = \"x\""),
            "assertion.key_fle",
            "assertion.key_file",
        ),
    ] {
        let (key, problem) = problem_for(&with(&keys), &[]);
        assert_eq!(key, expected_key, "{keys}: {problem}");
        assert!(problem.contains(fragment), "{keys}: {problem}");
    }
}

/// [`minimal`] with `[tls]` getting its certificate by ACME, the state in `state_dir`,
/// plus `extra` `[tls]` keys.
fn with_acme(state_dir: &Path, extra: &str) -> String {
    minimal().replace(
        "enabled = false",
        &format!(
            "acme_contact = \"ops@example.com\"\nacme_state_dir = \"{}\"\nacme_accept_terms = true\n{extra}",
            state_dir.display()
        ),
    )
}

#[test]
fn acme_defaults_to_lets_encrypt_and_public_urls_host() {
    let state = tempfile::tempdir().unwrap();
    let settings = load(&with_acme(state.path(), ""), &[]).unwrap();
    let TlsSettings::Acme(acme) = settings.tls else {
        panic!("ACME expected, got {:?}", settings.tls)
    };
    assert_eq!(acme.directory.as_str(), LETS_ENCRYPT_DIRECTORY);
    assert_eq!(acme.names, ["sentry.example.com"]);
    assert_eq!(acme.contact, "mailto:ops@example.com");
    assert_eq!(acme.state_dir, state.path());
    let named = load(
        &with_acme(state.path(), ""),
        &[(
            "SSOGATE_TLS_ACME_NAMES",
            "Sentry.Example.com, errors.example.com",
        )],
    )
    .unwrap();
    let TlsSettings::Acme(acme) = named.tls else {
        panic!("ACME expected")
    };
    assert_eq!(acme.names, ["sentry.example.com", "errors.example.com"]);
}

#[test]
fn acme_external_account_binding_reads_the_base64url_key_and_never_shows_it() {
    let state = tempfile::tempdir().unwrap();
    let key_file = state.path().join("eab.key");
    std::fs::write(&key_file, "c2VjcmV0LWhtYWMta2V5LWZyb20tdGhlLWNh\n").unwrap();
    let text = with_acme(
        state.path(),
        &format!(
            "acme_eab_kid = \"kid-1\"\nacme_eab_hmac_key_file = \"{}\"",
            key_file.display()
        ),
    );
    let TlsSettings::Acme(acme) = load(&text, &[]).unwrap().tls else {
        panic!("ACME expected")
    };
    let binding = acme.external_account.expect("a binding");
    assert_eq!(binding.kid, "kid-1");
    assert_eq!(binding.hmac_key, b"secret-hmac-key-from-the-ca");
    let shown = format!("{binding:?}");
    assert!(
        shown.contains("kid-1") && !shown.contains("secret"),
        "{shown}"
    );
}

#[test]
fn acme_mistakes_name_their_key() {
    let state = tempfile::tempdir().unwrap();
    let not_base64 = state.path().join("not-base64.key");
    std::fs::write(&not_base64, "not base64!").unwrap();
    let not_base64 = not_base64.display();
    let cases = [
        (
            with_acme(state.path(), "acme_eab_kid = \"kid-1\""),
            "tls.acme_eab_hmac_key_file",
            "missing: tls.acme_eab_kid needs the HMAC key",
        ),
        (
            with_acme(
                state.path(),
                &format!("acme_eab_hmac_key_file = \"{not_base64}\""),
            ),
            "tls.acme_eab_kid",
            "missing: the key ID",
        ),
        (
            with_acme(
                state.path(),
                &format!("acme_eab_kid = \"k\"\nacme_eab_hmac_key_file = \"{not_base64}\""),
            ),
            "tls.acme_eab_hmac_key_file",
            "does not hold a base64url key",
        ),
        (
            with_acme(state.path(), "cert_file = \"/etc/ssogate/fullchain.pem\""),
            "tls.cert_file",
            "is not used with tls.acme_contact",
        ),
        (
            with_acme(state.path(), "").replace("acme_accept_terms = true", ""),
            "tls.acme_accept_terms",
            "must be true",
        ),
        (
            with_acme(state.path(), "").replace("ops@example.com", "ops"),
            "tls.acme_contact",
            "`ops` is not an e-mail address",
        ),
        (
            with_acme(&state.path().join("absent"), ""),
            "tls.acme_state_dir",
            "does not exist",
        ),
        (
            with_acme(
                state.path(),
                "acme_directory = \"http://ca.example.com/dir\"",
            ),
            "tls.acme_directory",
            "is not an https:// URL",
        ),
        (
            with_acme(state.path(), "acme_names = [\"sentry example.com\"]"),
            "tls.acme_names",
            "is not a DNS name",
        ),
        (
            with_acme(state.path(), "").replace("https://sentry.example.com", "https://192.0.2.7"),
            "tls.acme_names",
            "`192.0.2.7` is an IP address",
        ),
        (
            minimal().replace(
                "enabled = false",
                "acme_directory = \"https://ca.example.com/dir\"",
            ),
            "tls.acme_contact",
            "missing",
        ),
    ];
    for (text, key, problem) in cases {
        let (found_key, found_problem) = problem_for(&text, &[]);
        assert_eq!(found_key, key, "{text}");
        assert!(found_problem.contains(problem), "{key}: {found_problem}");
    }
}
