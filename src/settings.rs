//! Typed settings (CONTRACT sections 2 and 8): the built-in defaults, then the file named
//! by `--config`, `MESSAGING_CONFIG` or `./settings.toml`, then `MESSAGING__SECTION__KEY`
//! variables, layered key by key by figment and validated once at start-up. Every problem
//! comes back as one `SettingsError` naming the key, so that `main` prints one line and
//! exits 2. Adding a key is one field here (with its default) and one commented line in
//! `settings.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use messaging_actors::domain::Subject;
use messaging_actors::senders::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Environment variables that override one key each start with this.
const ENV_PREFIX: &str = "MESSAGING__";
/// The body limit SendGrid's event batches need: it closes a batch once it reaches 768
/// KB, so the last event may take it a little past that; 1 MiB leaves room for one.
pub const SENDGRID_EVENT_BATCH_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub dispatch: DispatchSettings,
    pub outcomes: OutcomeSettings,
    pub breaker: BreakerSettings,
    pub routing: RoutingSettings,
    pub auth: AuthSettings,
    pub webhooks: WebhookSettings,
    pub callbacks: CallbackSettings,
    /// Each `[providers.NAME]` table as layered; `provider(NAME)` resolves it over the
    /// global `[outcomes]` and `[breaker]`.
    #[serde(rename = "providers")]
    provider_tables: BTreeMap<String, Dict>,
    /// Resolved once by `load`.
    #[serde(skip)]
    pub providers: BTreeMap<String, ProviderSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: String,
    pub max_body_bytes: usize,
    /// The service's public base URL (`https://host`), which Twilio signs its webhooks
    /// against; unset, each webhook's signature is checked against the URL it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    /// Bound on one database call: connecting, a statement, a lost peer (keepalive).
    pub timeout_ms: u64,
    /// Write lanes, each one writer thread with its own connection; unset, the backend's
    /// own number (`Backend::writers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writers: Option<u32>,
}

/// libpq's connection parameters (its documentation's list), which its errors quote
/// ("for connection option \"port\""): harmless to show.
const LIBPQ_OPTIONS: [&str; 43] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "requiressl",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "=",
];

/// What start-up logs in place of the database's error when the URL may be misread.
const NOT_SHOWN: &str = "(the database's own error is not shown: it may quote a piece of a \
    password its URL holds; percent-encode the password's reserved characters, and use \
    only libpq's parameters in the query)";

impl DatabaseSettings {
    /// The write lanes this database gets: `writers` if set, else the backend's own.
    pub fn writers(&self) -> usize {
        match (
            self.writers,
            messaging_actors::store::Backend::of(&self.url),
        ) {
            (Some(n), _) => usize::try_from(n).unwrap_or(1),
            (None, Ok(backend)) => backend.writers(),
            (None, Err(_)) => 1,
        }
    }

    /// `text` (an error met opening the database) with nothing of the URL's user part or
    /// password parameters. libpq quotes what it cannot read: the password of
    /// `postgres://app:p%zz@db/x` as an `invalid percent-encoded token`, or part of
    /// `postgres://app:pa/ss@db/x` as the port `"pa"`. So those parts are hidden wherever
    /// they stand, as written and decoded, and then every quoted token but the few known
    /// to be harmless: libpq's parameter names, a socket path, and the host, port,
    /// database and user of a URL `url_for_logs` shows.
    pub fn without_secrets(&self, text: &str) -> String {
        if self.url.starts_with("sqlite://") {
            return text.to_owned();
        }
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        // A URL libpq may read apart from the url crate (a password with an unencoded
        // `/`, `?`, `#` or `@`), with a quote (which shifts libpq's), or with a query
        // libpq would not take whole (an `&` inside a password splits it): libpq may then
        // show a piece of the password anywhere, unquoted too (as a port), so none of
        // its text is shown.
        let query_is_libpqs = rest.split_once('?').is_none_or(|(_, query)| {
            query.split('&').all(|pair| {
                pair.split_once('=')
                    .is_some_and(|(key, _)| LIBPQ_OPTIONS.contains(&key))
            })
        });
        if self.url_for_logs().starts_with('(') || self.url.contains('"') || !query_is_libpqs {
            return NOT_SHOWN.to_owned();
        }
        let mut secrets: Vec<String> = Vec::new();
        // Up to the last `@`: a user part however a parser splits it; one without a `:`
        // is a user name alone, which errors may show.
        if let Some(at) = rest.rfind('@') {
            let user_part = &rest[..at];
            if let Some((_, password)) = user_part.split_once(':') {
                secrets.push(user_part.to_owned());
                secrets.push(password.to_owned());
            }
        }
        if let Some((_, query)) = rest.split_once('?') {
            secrets.extend(
                query
                    .split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .filter(|(key, _)| key.to_ascii_lowercase().contains("password"))
                    .map(|(_, value)| value.to_owned()),
            );
        }
        let decoded: Vec<String> = secrets
            .iter()
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        secrets.extend(decoded);
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut text = text.to_owned();
        for secret in &secrets {
            text = text.replace(secret.as_str(), "***");
        }
        let mut harmless: Vec<String> = LIBPQ_OPTIONS.iter().map(|&o| o.to_owned()).collect();
        // Shown by `url_for_logs`, so the url crate and libpq read it alike.
        if let Ok(url) = url::Url::parse(&self.url) {
            harmless.extend(url.host_str().map(str::to_owned));
            harmless.extend(url.port().map(|port| port.to_string()));
            harmless.push(url.path().trim_start_matches('/').to_owned());
            harmless.push(
                percent_encoding::percent_decode_str(url.username())
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
        let mut shown = String::with_capacity(text.len());
        for (i, part) in text.split('"').enumerate() {
            if i > 0 {
                shown.push('"');
            }
            let quoted = i % 2 == 1;
            let socket = part.starts_with('/') && part.contains(".s.PGSQL.");
            if quoted && !part.is_empty() && !socket && !harmless.iter().any(|h| h == part) {
                shown.push_str("***");
            } else {
                shown.push_str(part);
            }
        }
        shown
    }

    /// `url` as it may be logged. A SQLite URL holds no secret and is shown whole. Of a
    /// PostgreSQL one only the scheme, host, port and path are shown, as the url crate
    /// reads them, never the user part or the query (libpq takes a password in both).
    /// Where the url crate and libpq would read the host apart (a password with an
    /// unencoded `/`, `#` or `?`: the parser fails, or takes part of it for a host, a
    /// port or a fragment), it is not shown at all.
    pub fn url_for_logs(&self) -> String {
        if self.url.starts_with("sqlite://") {
            return self.url.clone();
        }
        let hidden = || "(a URL not shown: it may hold a password)".to_owned();
        let Some((_, rest)) = self.url.split_once("://") else {
            return hidden();
        };
        // libpq's reading: the user part ends at an `@` met before any `/`.
        let after_user = match rest.find(['@', '/']) {
            Some(at) if rest[at..].starts_with('@') => &rest[at + 1..],
            _ => rest,
        };
        let libpq_host = match after_user.find(']') {
            Some(end) if after_user.starts_with('[') => &after_user[..=end],
            _ => after_user.split([':', '/', '?']).next().unwrap_or_default(),
        };
        let Ok(url) = url::Url::parse(&self.url) else {
            return hidden();
        };
        let host = url.host_str().unwrap_or_default();
        if host != libpq_host || url.fragment().is_some() || url.path().contains('@') {
            return hidden();
        }
        let port = url
            .port()
            .map(|port| format!(":{port}"))
            .unwrap_or_default();
        format!("{}://{host}{port}{}", url.scheme(), url.path())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub level: LogLevel,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchSettings {
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub retry_after_ms: u64,
    pub backlog_limit: u64,
    pub lease_ms: u64,
}

/// `[outcomes]`, and the same keys in any `[providers.NAME]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomeSettings {
    pub timeout_pct: f64,
    pub error_pct: f64,
    pub ratelimit_pct: f64,
    pub latency_ms: u64,
    pub timeout_ms: u64,
}

/// `[breaker]`, and the same keys in any `[providers.NAME.breaker]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    pub window_size: u32,
    pub minimum_calls: u32,
    pub failure_rate_threshold: f64,
    pub open_ms: u64,
    pub half_open_calls: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    #[serde(deserialize_with = "text")]
    pub sms: String,
    #[serde(deserialize_with = "text")]
    pub mms: String,
    #[serde(deserialize_with = "text")]
    pub email: String,
}

/// A string key whose value may look like a number: the environment layer reads
/// `MESSAGING__ROUTING__EMAIL=42` as the number 42, and a provider may be named "42" (or
/// an email's default subject be "2024").
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Text::deserialize(d).map(String::from)
}

/// `text` for a key that may be left out.
fn optional_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<Text>::deserialize(d).map(|text| text.map(String::from))
}

/// What a string key may be given, read back as its text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Str(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
}

impl From<Text> for String {
    fn from(text: Text) -> String {
        match text {
            Text::Str(s) => s,
            Text::Unsigned(n) => n.to_string(),
            Text::Signed(n) => n.to_string(),
            Text::Float(n) => n.to_string(),
            Text::Bool(b) => b.to_string(),
        }
    }
}

/// What an API key may do (CONTRACT section 9).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /api/messages/*`.
    Send,
    /// `GET /api/*`.
    Read,
    /// The operator controls of section 11.
    Admin,
}

/// `[auth]`: with no keys the API is open.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub keys: BTreeMap<String, ApiKeySettings>,
}

/// `[auth.keys.NAME]`: the key's SHA-256 (never the key), its scopes and its rate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub sha256: String,
    pub scopes: Vec<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_min: Option<u32>,
}

/// `[webhooks]`: the Standard Webhooks secret the inbound webhooks are signed with.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// The environment variable holding the secret (`whsec_` + base64).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_text"
    )]
    pub secret_env: Option<String>,
    /// Read from `secret_env` by `load`.
    #[serde(skip)]
    pub secret: Option<Secret>,
}

/// `[callbacks]` (CONTRACT section 10): where final statuses go when a request names no
/// `status_callback`, how they are signed, and for how long they are tried.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The variable holding the Standard Webhooks secret callbacks are signed with.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_text"
    )]
    pub secret_env: Option<String>,
    pub max_age_ms: u64,
    /// One try's limit (the contract's 10 s).
    pub request_timeout_ms: u64,
    /// Read from `secret_env` by `load`.
    #[serde(skip)]
    pub secret: Option<Secret>,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            url: None,
            secret_env: None,
            max_age_ms: 86_400_000,
            request_timeout_ms: 10_000,
            secret: None,
        }
    }
}

/// How a simulated provider seeds its outcome stream: a fixed `u64`, or `"entropy"` (the
/// OS generator at every start). A provider that names no seed at any layer uses entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    Fixed(u64),
    Entropy,
}

impl Serialize for Seed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Seed::Fixed(n) => s.serialize_u64(*n),
            Seed::Entropy => s.serialize_str("entropy"),
        }
    }
}

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seed;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned 64-bit integer or \"entropy\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Seed, E> {
                Ok(Seed::Fixed(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Seed, E> {
                u64::try_from(n)
                    .map(Seed::Fixed)
                    .map_err(|_| E::custom("a seed is an unsigned 64-bit integer or \"entropy\""))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Seed, E> {
                match s {
                    "entropy" => Ok(Seed::Entropy),
                    _ => s.parse().map(Seed::Fixed).map_err(|_| {
                        E::custom("a seed is an unsigned 64-bit integer or \"entropy\"")
                    }),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What a provider is: the seeded simulator, or a real API (CONTRACT section 8).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Simulated,
    Twilio,
    Sendgrid,
}

impl ProviderKind {
    /// As the settings spell it, for errors that name it.
    fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Simulated => "simulated",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Sendgrid => "sendgrid",
        }
    }

    /// Whether this kind can send `channel` (as `[routing]` names it): Twilio's Messages
    /// API takes SMS and MMS, SendGrid's mail send takes email, the simulator anything.
    fn carries(self, channel: &str) -> bool {
        match self {
            ProviderKind::Simulated => true,
            ProviderKind::Twilio => matches!(channel, "sms" | "mms"),
            ProviderKind::Sendgrid => channel == "email",
        }
    }
}

/// The keys of a real provider (`kind = "twilio"` or `"sendgrid"`); a simulated one
/// ignores them. Secrets are named by `*_env` keys, never written here.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RealProviderSettings {
    /// The API's base URL; defaults per kind. Tests point it at a local fake.
    pub base_url: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub account_sid: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub auth_token_env: Option<String>,
    #[serde(deserialize_with = "optional_text")]
    pub api_key_env: Option<String>,
    pub request_timeout_ms: u64,
    pub max_in_flight: u32,
    pub status_callback_url: Option<String>,
    pub sender_interval_ms: u64,
    #[serde(deserialize_with = "text")]
    pub default_subject: String,
    /// SendGrid's signed event webhook public key (base64 DER, as SendGrid shows it).
    pub event_webhook_public_key: Option<String>,
}

impl Default for RealProviderSettings {
    fn default() -> Self {
        RealProviderSettings {
            base_url: None,
            account_sid: None,
            auth_token_env: None,
            api_key_env: None,
            request_timeout_ms: 10_000,
            max_in_flight: 64,
            status_callback_url: None,
            sender_interval_ms: 0,
            default_subject: "Message".to_owned(),
            event_webhook_public_key: None,
        }
    }
}

/// One provider, resolved: its own keys over the global sections, its secret read.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    /// `None`: seeded from OS entropy.
    pub seed: Option<u64>,
    pub outcomes: OutcomeSettings,
    pub breaker: BreakerSettings,
    pub real: RealProviderSettings,
    /// The auth token (Twilio) or API key (SendGrid), from the variable `*_env` names.
    pub secret: Option<Secret>,
}

impl ProviderSettings {
    /// The API's base URL: the configured one, else the provider's own.
    pub fn base_url(&self) -> &str {
        match (&self.real.base_url, self.kind) {
            (Some(url), _) => url,
            (None, ProviderKind::Twilio) => "https://api.twilio.com",
            (None, _) => "https://api.sendgrid.com",
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        let seeded = |seed: u64| Dict::from([("seed".to_owned(), Value::from(seed))]);
        Settings {
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            log: LogSettings::default(),
            dispatch: DispatchSettings::default(),
            outcomes: OutcomeSettings::default(),
            breaker: BreakerSettings::default(),
            routing: RoutingSettings::default(),
            auth: AuthSettings::default(),
            webhooks: WebhookSettings::default(),
            callbacks: CallbackSettings::default(),
            provider_tables: BTreeMap::from([
                ("sms-mms".to_owned(), seeded(42)),
                ("email".to_owned(), seeded(7)),
            ]),
            providers: BTreeMap::new(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 262_144,
            public_url: None,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://messaging.db".to_owned(),
            pool_size: 8,
            timeout_ms: 5_000,
            writers: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: LogLevel::Info,
        }
    }
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            max_attempts: 5,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            retry_after_ms: 1_000,
            backlog_limit: 100_000,
            lease_ms: 30_000,
        }
    }
}

impl Default for OutcomeSettings {
    fn default() -> Self {
        OutcomeSettings {
            timeout_pct: 0.0,
            error_pct: 0.0,
            ratelimit_pct: 0.0,
            latency_ms: 0,
            timeout_ms: 1_000,
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            window_size: 20,
            minimum_calls: 10,
            failure_rate_threshold: 0.5,
            open_ms: 30_000,
            half_open_calls: 5,
        }
    }
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            sms: "sms-mms".to_owned(),
            mms: "sms-mms".to_owned(),
            email: "email".to_owned(),
        }
    }
}

/// One configuration problem, printed as a single line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub key: String,
    pub problem: String,
}

impl SettingsError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        SettingsError {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The key figment's error points at, under `prefix` (a provider's table is read on
    /// its own, so its errors name keys relative to it).
    fn from_figment(e: figment::Error, prefix: &str, source: &str) -> Self {
        let mut path: Vec<String> = prefix
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        path.extend(e.path.iter().cloned());
        let problem = match &e.kind {
            // figment's path already ends with the field.
            figment::error::Kind::UnknownField(field, _) => format!("unknown field `{field}`"),
            figment::error::Kind::Message(m) if path.is_empty() => {
                return SettingsError::new(source, m.clone())
            }
            figment::error::Kind::InvalidType(found, expected) => {
                format!(
                    "invalid type: found {}, expected {expected}",
                    shown(found, expected)
                )
            }
            figment::error::Kind::InvalidValue(found, expected) => {
                format!(
                    "invalid value: found {}, expected {expected}",
                    shown(found, expected)
                )
            }
            // The expected names say enough; what was found may be a secret gone astray.
            figment::error::Kind::UnknownVariant(_, expected) => format!(
                "unknown variant (not shown: it may be a secret), expected {}",
                expected.join(", ")
            ),
            kind => kind.to_string(),
        };
        let key = if path.is_empty() {
            source.to_owned()
        } else {
            path.join(".")
        };
        SettingsError::new(key, problem)
    }
}

/// A wrong value as an error may show it: text only where the key holds a number or a
/// boolean, so the text cannot be the secret the key holds (a database URL given for
/// `MESSAGING__DATABASE` instead of `MESSAGING__DATABASE__URL` would be one).
fn shown(found: &figment::error::Actual, expected: &str) -> String {
    use figment::error::Actual;
    let numeric = expected == "a boolean"
        || ["u", "i", "f"].iter().any(|prefix| {
            expected
                .strip_prefix(prefix)
                .is_some_and(|bits| !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit()))
        });
    match found {
        Actual::Str(_) | Actual::Char(_) | Actual::Bytes(_) | Actual::Other(_) if !numeric => {
            "a string (not shown: it may be a secret)".to_owned()
        }
        found => found.to_string(),
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parser messages can span lines; the contract promises one.
        let problem = self
            .problem
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        write!(f, "{}: {}", self.key, problem)
    }
}

impl std::error::Error for SettingsError {}

/// Which file to read: `--config`, else `MESSAGING_CONFIG`, else `./settings.toml` if it
/// exists, else none (built-in defaults). A file named explicitly must exist.
pub fn config_path(cli: Option<PathBuf>, env: Option<PathBuf>) -> Option<PathBuf> {
    cli.or(env).or_else(|| {
        let local = PathBuf::from("settings.toml");
        local.is_file().then_some(local)
    })
}

/// Layers the defaults, the file and the process environment, then validates.
pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
    let source = file.map_or_else(|| "settings".to_owned(), |p| p.display().to_string());
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| SettingsError::new(&source, format!("cannot read: {e}")))?,
        None => String::new(),
    };
    from_toml(&text, &source)
}

/// The same as `load` for a file's text held in a string (tests, and `load` itself).
pub fn from_toml(text: &str, source: &str) -> Result<Settings, SettingsError> {
    // Parsed here first so that a syntax error names the file, not a key.
    text.parse::<toml::Table>()
        .map_err(|e| SettingsError::new(source, not_valid_toml(text, &e)))?;
    let figment = Figment::from(Serialized::defaults(Settings::default()))
        .merge(Toml::string(text))
        .merge(Env::prefixed(ENV_PREFIX).split("__"));
    let mut settings: Settings = figment
        .extract()
        .map_err(|e| SettingsError::from_figment(e, "", source))?;
    settings.providers = settings
        .provider_tables
        .iter()
        .map(|(name, table)| Ok((name.clone(), settings.resolve(name, table, source)?)))
        .collect::<Result<_, SettingsError>>()?;
    if let Some(variable) = &settings.webhooks.secret_env {
        settings.webhooks.secret = Some(secret_from_env("webhooks.secret_env", variable)?);
    }
    if let Some(variable) = &settings.callbacks.secret_env {
        settings.callbacks.secret = Some(secret_from_env("callbacks.secret_env", variable)?);
    }
    settings.validate()?;
    Ok(settings)
}

/// Where the file's syntax fails and why, without the parser's excerpt of the line: the
/// line may hold a secret written where it does not belong.
fn not_valid_toml(text: &str, e: &toml::de::Error) -> String {
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        }
        None => String::new(),
    };
    format!("not valid TOML{at}: {}", e.message())
}

/// A secret from the variable a `*_env` key names; missing or empty stops start-up. The
/// error does not repeat the name: a secret pasted where its variable's name belongs
/// would be printed.
fn secret_from_env(key: &str, variable: &str) -> Result<Secret, SettingsError> {
    let named = !variable.is_empty()
        && !variable.starts_with(|c: char| c.is_ascii_digit())
        && variable
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !named {
        return Err(SettingsError::new(
            key,
            "must name an environment variable (letters, digits and '_', not starting with \
             a digit), not hold the secret itself",
        ));
    }
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
        Ok(_) => Err(SettingsError::new(
            key,
            "names an environment variable that is empty",
        )),
        Err(_) => Err(SettingsError::new(
            key,
            "names an environment variable that is not set",
        )),
    }
}

/// The most outcomes a breaker's window holds: each provider keeps room for all of them.
const MAX_WINDOW_SIZE: u32 = 100_000;

/// Provider and key names: 1 to 64 letters, digits, '-', '_' or '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn is_http_url(raw: &str) -> bool {
    url::Url::parse(raw).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

fn check(ok: bool, key: &str, problem: &str) -> Result<(), SettingsError> {
    if ok {
        Ok(())
    } else {
        Err(SettingsError::new(key, problem))
    }
}

fn check_pct(value: f64, key: &str) -> Result<(), SettingsError> {
    check(
        value.is_finite() && (0.0..=100.0).contains(&value),
        key,
        "must be a percentage from 0 to 100",
    )
}

impl OutcomeSettings {
    fn validate(&self, prefix: &str) -> Result<(), SettingsError> {
        check_pct(self.timeout_pct, &format!("{prefix}.timeout_pct"))?;
        check_pct(self.error_pct, &format!("{prefix}.error_pct"))?;
        check_pct(self.ratelimit_pct, &format!("{prefix}.ratelimit_pct"))?;
        let sum = self.timeout_pct + self.error_pct + self.ratelimit_pct;
        check(
            sum <= 100.0 + 1e-9,
            prefix,
            &format!("timeout_pct + error_pct + ratelimit_pct is {sum}, more than 100"),
        )
    }
}

impl BreakerSettings {
    fn validate(&self, prefix: &str) -> Result<(), SettingsError> {
        let key = |k: &str| format!("{prefix}.{k}");
        check(
            (1..=MAX_WINDOW_SIZE).contains(&self.window_size),
            &key("window_size"),
            "must be from 1 to 100000",
        )?;
        check(
            (1..=self.window_size).contains(&self.minimum_calls),
            &key("minimum_calls"),
            "must be from 1 to window_size",
        )?;
        check(
            self.failure_rate_threshold.is_finite()
                && (0.0..=1.0).contains(&self.failure_rate_threshold),
            &key("failure_rate_threshold"),
            "must be from 0 to 1",
        )?;
        check(self.open_ms >= 1, &key("open_ms"), "must be at least 1")?;
        check(
            self.half_open_calls >= 1,
            &key("half_open_calls"),
            "must be at least 1",
        )
    }
}

impl Settings {
    /// A provider's table over the global sections: `seed` is its own, `breaker` layers
    /// over `[breaker]`, every other key over `[outcomes]`.
    fn resolve(
        &self,
        name: &str,
        table: &Dict,
        source: &str,
    ) -> Result<ProviderSettings, SettingsError> {
        let prefix = format!("providers.{name}");
        let mut table = table.clone();
        let seed = match table.remove("seed") {
            Some(value) => Figment::from(Serialized::defaults(Dict::from([(
                "seed".to_owned(),
                value,
            )])))
            .extract_inner::<Seed>("seed")
            .map_err(|e| SettingsError::from_figment(e, &prefix, source))?,
            None => Seed::Entropy,
        };
        let kind = match table.remove("kind") {
            Some(value) => Figment::from(Serialized::defaults(Dict::from([(
                "kind".to_owned(),
                value,
            )])))
            .extract_inner::<ProviderKind>("kind")
            .map_err(|e| SettingsError::from_figment(e, &prefix, source))?,
            None => ProviderKind::Simulated,
        };
        // The outcome keys are whatever `[outcomes]` has; every other key is a real
        // provider's (and refused by name if it is neither).
        let outcome_keys: Vec<String> = Figment::from(Serialized::defaults(&self.outcomes))
            .extract::<Dict>()
            .map(|d| d.into_keys().collect())
            .unwrap_or_default();
        let (outcome_table, real_table): (Dict, Dict) = table
            .clone()
            .into_iter()
            .filter(|(key, _)| key != "breaker")
            .partition(|(key, _)| outcome_keys.contains(key));
        let breaker = match table.remove("breaker") {
            Some(Value::Dict(_, dict)) => dict,
            Some(_) => {
                return Err(SettingsError::new(
                    format!("{prefix}.breaker"),
                    "must be a table",
                ))
            }
            None => Dict::new(),
        };
        let outcomes = Figment::from(Serialized::defaults(&self.outcomes))
            .merge(Serialized::defaults(outcome_table))
            .extract()
            .map_err(|e| SettingsError::from_figment(e, &prefix, source))?;
        let real: RealProviderSettings =
            Figment::from(Serialized::defaults(RealProviderSettings::default()))
                .merge(Serialized::defaults(real_table))
                .extract()
                .map_err(|e| SettingsError::from_figment(e, &prefix, source))?;
        let secret_key = match kind {
            ProviderKind::Simulated => None,
            ProviderKind::Twilio => Some(("auth_token_env", &real.auth_token_env)),
            ProviderKind::Sendgrid => Some(("api_key_env", &real.api_key_env)),
        };
        let secret = match secret_key {
            None => None,
            Some((key, None)) => {
                return Err(SettingsError::new(
                    format!("{prefix}.{key}"),
                    "is required for this kind: the environment variable holding the secret",
                ))
            }
            Some((key, Some(variable))) => {
                Some(secret_from_env(&format!("{prefix}.{key}"), variable)?)
            }
        };
        let breaker = Figment::from(Serialized::defaults(&self.breaker))
            .merge(Serialized::defaults(breaker))
            .extract()
            .map_err(|e| SettingsError::from_figment(e, &format!("{prefix}.breaker"), source))?;
        Ok(ProviderSettings {
            kind,
            seed: match seed {
                Seed::Fixed(n) => Some(n),
                Seed::Entropy => None,
            },
            outcomes,
            breaker,
            real,
            secret,
        })
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bind_ok = self
            .server
            .bind
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.next().is_some());
        check(
            bind_ok,
            "server.bind",
            "must be HOST:PORT, e.g. 127.0.0.1:8080",
        )?;
        check(
            (1..=64 * 1024 * 1024).contains(&self.server.max_body_bytes),
            "server.max_body_bytes",
            "must be from 1 to 67108864",
        )?;
        check(
            messaging_actors::store::Backend::of(&self.database.url).is_ok(),
            "database.url",
            "must be sqlite://PATH (relative), sqlite:///ABSOLUTE/PATH or postgres://…",
        )?;
        check(
            (1..=64).contains(&self.database.pool_size),
            "database.pool_size",
            "must be from 1 to 64",
        )?;
        check(
            (100..=600_000).contains(&self.database.timeout_ms),
            "database.timeout_ms",
            "must be from 100 to 600000",
        )?;
        if let Some(writers) = self.database.writers {
            check(
                (1..=8).contains(&writers),
                "database.writers",
                "must be from 1 to 8",
            )?;
            check(
                writers == 1
                    || matches!(
                        messaging_actors::store::Backend::of(&self.database.url),
                        Ok(messaging_actors::store::Backend::Postgres)
                    ),
                "database.writers",
                "must be 1 on SQLite (one writer at a time owns the file)",
            )?;
        }
        let d = &self.dispatch;
        check(
            d.max_attempts >= 1,
            "dispatch.max_attempts",
            "must be at least 1",
        )?;
        check(
            d.backoff_max_ms >= d.backoff_initial_ms,
            "dispatch.backoff_max_ms",
            "must be at least backoff_initial_ms",
        )?;
        check(
            d.backlog_limit >= 1,
            "dispatch.backlog_limit",
            "must be at least 1",
        )?;
        // Renewed every third of it, a lease must outlast a round trip to the database.
        check(
            d.lease_ms >= 300,
            "dispatch.lease_ms",
            "must be at least 300",
        )?;
        self.outcomes.validate("outcomes")?;
        self.breaker.validate("breaker")?;
        for (name, provider) in &self.providers {
            check(
                valid_name(name),
                &format!("providers.{name}"),
                "a provider name is 1 to 64 letters, digits, '-', '_' or '.'",
            )?;
            provider.outcomes.validate(&format!("providers.{name}"))?;
            provider
                .breaker
                .validate(&format!("providers.{name}.breaker"))?;
            self.validate_real(name, provider)?;
        }
        // An email routed to Twilio would go out as an SMS to an address (and its body to
        // a third party that cannot deliver it); refused here, not failed message by message.
        let routing = &self.routing;
        for (channel, name) in [
            ("sms", &routing.sms),
            ("mms", &routing.mms),
            ("email", &routing.email),
        ] {
            if let Some(provider) = self.providers.get(name) {
                check(
                    provider.kind.carries(channel),
                    &format!("routing.{channel}"),
                    &format!(
                        "names provider \"{name}\" of kind \"{}\", which cannot send {channel}",
                        provider.kind.as_str()
                    ),
                )?;
            }
        }
        for (name, key) in &self.auth.keys {
            let prefix = format!("auth.keys.{name}");
            check(
                valid_name(name),
                &prefix,
                "a key name is 1 to 64 letters, digits, '-', '_' or '.'",
            )?;
            check(
                key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                &format!("{prefix}.sha256"),
                "must be 64 hex digits: the SHA-256 of the key (messaging-service keygen NAME)",
            )?;
            check(
                !key.scopes.is_empty(),
                &format!("{prefix}.scopes"),
                "must name at least one of send, read, admin",
            )?;
            if let Some(rate) = key.rate_limit_per_min {
                check(
                    (1..=1_000_000).contains(&rate),
                    &format!("{prefix}.rate_limit_per_min"),
                    "must be from 1 to 1000000",
                )?;
            }
        }
        for (key, secret) in [
            ("webhooks.secret_env", &self.webhooks.secret),
            ("callbacks.secret_env", &self.callbacks.secret),
        ] {
            if let Some(secret) = secret {
                check(
                    secret.expose().starts_with("whsec_")
                        && base64::engine::general_purpose::STANDARD
                            .decode(&secret.expose()["whsec_".len()..])
                            .is_ok_and(|key| !key.is_empty()),
                    key,
                    "the variable must hold a Standard Webhooks secret: whsec_ and base64",
                )?;
            }
        }
        if let Some(url) = &self.callbacks.url {
            check(
                is_http_url(url) && url.chars().count() <= 2048,
                "callbacks.url",
                "must be an http or https URL of at most 2048 characters",
            )?;
        }
        check(
            self.callbacks.max_age_ms >= 1,
            "callbacks.max_age_ms",
            "must be at least 1",
        )?;
        check(
            (1..=600_000).contains(&self.callbacks.request_timeout_ms),
            "callbacks.request_timeout_ms",
            "must be from 1 to 600000",
        )?;
        if let Some(url) = &self.server.public_url {
            check(
                is_http_url(url),
                "server.public_url",
                "must be an http or https URL",
            )?;
        }
        Ok(())
    }

    fn validate_real(&self, name: &str, provider: &ProviderSettings) -> Result<(), SettingsError> {
        let key = |k: &str| format!("providers.{name}.{k}");
        let real = &provider.real;
        // Checked on every kind: a key set at all makes SendGrid's events verified
        // (`webhook_keys`), so one that cannot verify anything must not start quietly.
        if let Some(public_key) = &real.event_webhook_public_key {
            check(
                crate::http::sendgrid_public_key(public_key).is_some(),
                &key("event_webhook_public_key"),
                "must be SendGrid's verification key: base64 of a DER P-256 public key",
            )?;
        }
        match provider.kind {
            ProviderKind::Simulated => return Ok(()),
            ProviderKind::Twilio => {
                check(
                    real.account_sid.as_deref().is_some_and(|s| !s.is_empty()),
                    &key("account_sid"),
                    "is required for kind \"twilio\"",
                )?;
                if let Some(url) = &real.status_callback_url {
                    check(
                        is_http_url(url),
                        &key("status_callback_url"),
                        "must be an http or https URL",
                    )?;
                }
            }
            ProviderKind::Sendgrid => {}
        }
        check(
            is_http_url(provider.base_url()),
            &key("base_url"),
            "must be an http or https URL",
        )?;
        check(
            (1..=600_000).contains(&real.request_timeout_ms),
            &key("request_timeout_ms"),
            "must be from 1 to 600000",
        )?;
        check(
            (1..=8192).contains(&real.max_in_flight),
            &key("max_in_flight"),
            "must be from 1 to 8192",
        )?;
        check(
            Subject::try_from(real.default_subject.clone()).is_ok(),
            &key("default_subject"),
            "must be 1 to 998 characters, not only whitespace, and no control character \
             but a tab (it is one header line)",
        )
    }

    /// Whether any provider sends for real.
    pub fn any_real_provider(&self) -> bool {
        self.providers
            .values()
            .any(|p| p.kind != ProviderKind::Simulated)
    }

    /// The first provider of `kind = "sendgrid"` when `server.max_body_bytes` is too small
    /// for SendGrid's event batches, which it posts "when the batch size reaches 768
    /// kilobytes" (its Event Webhook documentation): a larger batch gets 413, and SendGrid
    /// retries it for 24 hours and then drops its receipts.
    pub fn sendgrid_batches_too_large(&self) -> Option<&str> {
        if self.server.max_body_bytes >= SENDGRID_EVENT_BATCH_BYTES {
            return None;
        }
        self.providers
            .iter()
            .find(|(_, p)| p.kind == ProviderKind::Sendgrid)
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    fn parse(text: &str) -> Result<Settings, SettingsError> {
        from_toml(text, "test.toml")
    }

    fn error_key(text: &str) -> String {
        parse(text).expect_err("should be refused").key
    }

    /// Runs `f` with `env` set and nothing else of the process environment visible to
    /// figment's `MESSAGING__` prefix (figment's `Jail` serialises such tests).
    #[expect(
        clippy::result_large_err,
        reason = "figment's Jail fixes the closure's error type"
    )]
    fn with_env<T>(env: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
        let mut out = None;
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = Some(f());
            Ok(())
        });
        out.expect("the jail ran the closure")
    }

    #[test]
    fn the_committed_settings_file_equals_the_built_in_defaults() {
        let committed = include_str!("../settings.toml");
        with_env(&[], || {
            // The tables as written differ in number type (i64 from TOML, u64 from the
            // defaults); what they resolve to is what counts.
            let resolved = |s: Settings| Settings {
                provider_tables: BTreeMap::new(),
                ..s
            };
            assert_eq!(parse(committed).map(resolved), parse("").map(resolved));
            let s = parse("").expect("defaults are valid");
            assert_eq!(s.providers["sms-mms"].seed, Some(42));
            assert_eq!(s.providers["email"].seed, Some(7));
        });
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        with_env(&[], || {
            let err = parse("[server]\nbindd = \"x\"").expect_err("unknown key");
            assert_eq!(err.key, "server.bindd");
            assert!(err.problem.contains("unknown field"), "{err}");
            assert_eq!(error_key("[nope]\na = 1"), "nope");
            assert_eq!(
                error_key("[providers.email]\nseeed = 1"),
                "providers.email.seeed"
            );
            assert_eq!(
                error_key("[providers.email.breaker]\nopen = 1"),
                "providers.email.breaker.open"
            );
            assert_eq!(error_key("[routing]\nvoice = \"x\""), "routing.voice");
        });
    }

    #[test]
    fn wrong_types_name_the_key() {
        with_env(&[], || {
            assert_eq!(
                error_key("[dispatch]\nmax_attempts = \"five\""),
                "dispatch.max_attempts"
            );
            assert_eq!(error_key("[log]\nlevel = \"loud\""), "log.level");
            assert_eq!(
                error_key("[database]\npool_size = -1"),
                "database.pool_size"
            );
            assert_eq!(
                error_key("[providers.email]\nseed = \"x\""),
                "providers.email.seed"
            );
            assert_eq!(
                error_key("[providers.email]\nerror_pct = \"x\""),
                "providers.email.error_pct"
            );
        });
    }

    #[test]
    fn a_database_url_is_logged_without_its_password() {
        let shown = |url: &str| {
            DatabaseSettings {
                url: url.into(),
                ..DatabaseSettings::default()
            }
            .url_for_logs()
        };
        let hidden = "(a URL not shown: it may hold a password)";
        for (url, expected) in [
            (
                "postgres://app:s3cret@db:5432/messaging?sslmode=require",
                "postgres://db:5432/messaging",
            ),
            (
                "postgresql://app@db/messaging?password=s3cret&sslmode=require",
                "postgresql://db/messaging",
            ),
            ("postgres://db/messaging", "postgres://db/messaging"),
            (
                "postgres://u:s3cret@[::1]:5432/db",
                "postgres://[::1]:5432/db",
            ),
            (
                "postgres://db:5432/x?password=p@s3cret",
                "postgres://db:5432/x",
            ),
            // Passwords a URL parser fails on, or reads as a port, a path or a fragment.
            ("postgres://app:pa/s3cret@db/x", hidden),
            ("postgres://app:1234#s3cret@db/x", hidden),
            ("postgres://app:12/s3cret@db/x", hidden),
            ("postgres://app:12?s3cret@db/x", hidden),
            ("postgres://db?password=p@s3cret", hidden),
            // libpq's own forms without a host: a socket directory in the query.
            ("postgres:///db?host=/var/run/postgresql", "postgres:///db"),
        ] {
            assert_eq!(shown(url), expected, "{url}");
        }
        assert_eq!(shown("sqlite://messages.db"), "sqlite://messages.db");
    }

    #[test]
    fn an_error_opening_the_database_is_told_without_a_piece_of_the_password() {
        let told = |url: &str, error: &str| {
            DatabaseSettings {
                url: url.into(),
                ..DatabaseSettings::default()
            }
            .without_secrets(error)
        };
        for (url, error, expected) in [
            (
                "postgres://app:s3%zzcret@db/x",
                r#"invalid percent-encoded token: "s3%zzcret""#,
                r#"invalid percent-encoded token: "***""#,
            ),
            (
                "postgres://app:pa/ss@db/x",
                r#"invalid integer value "pa" for connection option "port""#,
                NOT_SHOWN,
            ),
            (
                "postgres://app:s3cret@db/x",
                r#"connection to server at "db" (10.0.0.1), port 5432 failed: password authentication failed for user "app""#,
                r#"connection to server at "db" (10.0.0.1), port 5432 failed: password authentication failed for user "app""#,
            ),
            (
                "postgres://db/x?password=s3%20cret&sslmode=require",
                "could not use s3 cret or s3%20cret; sslmode \"require\"",
                "could not use *** or ***; sslmode \"***\"",
            ),
            // URLs libpq may read apart: none of its text is shown.
            (
                "postgres://app:pa\"s%zz@db/x",
                r#"invalid percent-encoded token: "pa"s%zz""#,
                NOT_SHOWN,
            ),
            (
                "postgres://app:12/ss@db/x",
                r#"database "ss@db/x" does not exist"#,
                NOT_SHOWN,
            ),
            (
                "postgres://postgres:1234/abcd@postgres/app",
                r#"connection to server at "postgres" (10.0.0.1), port 1234 failed"#,
                NOT_SHOWN,
            ),
            (
                "postgres://db/x?password=ab&cd",
                r#"invalid URI query parameter: "cd""#,
                NOT_SHOWN,
            ),
            (
                "postgres://db/x?password=ab&c=d",
                r#"invalid URI query parameter: "c""#,
                NOT_SHOWN,
            ),
            (
                "postgres://app:s3cret@127.0.0.1:1/messaging",
                r#"connection to server at "127.0.0.1", port 1 failed: Connection refused; database "messaging", option "port""#,
                r#"connection to server at "127.0.0.1", port 1 failed: Connection refused; database "messaging", option "port""#,
            ),
            (
                "postgres:///x?host=/run/postgresql",
                r#"connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed"#,
                r#"connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed"#,
            ),
            (
                "postgres://app@db/x?application_name=app",
                r#"role "app" does not exist (application_name "app")"#,
                r#"role "app" does not exist (application_name "app")"#,
            ),
            (
                "sqlite://messages.db",
                r#"unable to open "messages.db""#,
                r#"unable to open "messages.db""#,
            ),
        ] {
            assert_eq!(told(url, error), expected, "{url}");
        }
    }

    #[test]
    fn writers_default_to_the_backends_and_more_than_one_needs_postgres() {
        with_env(&[], || {
            let pg = "[database]\nurl = \"postgres://u@h/db\"\n";
            assert_eq!(parse("").expect("defaults").database.writers(), 1);
            assert_eq!(parse(pg).expect("postgres").database.writers(), 2);
            let one = parse(&format!("{pg}writers = 1")).expect("one writer");
            assert_eq!(one.database.writers(), 1);
            let four = parse(&format!("{pg}writers = 4")).expect("four writers");
            assert_eq!(four.database.writers(), 4);
            assert_eq!(
                parse("[database]\nwriters = 1")
                    .expect("sqlite")
                    .database
                    .writers(),
                1
            );
            for refused in [
                format!("{pg}writers = 0"),
                format!("{pg}writers = 9"),
                "[database]\nwriters = 2".to_owned(),
            ] {
                assert_eq!(error_key(&refused), "database.writers", "{refused}");
            }
        });
        with_env(
            &[
                ("MESSAGING__DATABASE__URL", "postgres://u@h/db"),
                ("MESSAGING__DATABASE__WRITERS", "1"),
            ],
            || {
                assert_eq!(
                    parse("").expect("from the environment").database.writers(),
                    1
                )
            },
        );
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        with_env(&[], || {
            assert_eq!(
                error_key("[outcomes]\nerror_pct = 101"),
                "outcomes.error_pct"
            );
            assert_eq!(
                error_key("[outcomes]\nerror_pct = -1.0"),
                "outcomes.error_pct"
            );
            assert_eq!(
                error_key("[outcomes]\nerror_pct = 60.0\ntimeout_pct = 50.0"),
                "outcomes"
            );
            assert_eq!(
                error_key("[providers.sms-mms]\nerror_pct = 60.0\nratelimit_pct = 41.0"),
                "providers.sms-mms"
            );
            assert_eq!(
                error_key("[providers.email.breaker]\nfailure_rate_threshold = 1.5"),
                "providers.email.breaker.failure_rate_threshold"
            );
            assert_eq!(
                error_key("[breaker]\nminimum_calls = 21"),
                "breaker.minimum_calls"
            );
            assert_eq!(error_key("[server]\nbind = \"nowhere\""), "server.bind");
            assert_eq!(error_key("[database]\nurl = \"mysql://x\""), "database.url");
            assert_eq!(
                error_key("[database]\ntimeout_ms = 0"),
                "database.timeout_ms"
            );
            assert_eq!(
                error_key("[dispatch]\nmax_attempts = 0"),
                "dispatch.max_attempts"
            );
            assert_eq!(error_key("[providers.\"a b\"]\nseed = 1"), "providers.a b");
        });
    }

    #[test]
    fn a_global_sum_over_100_is_refused_even_if_a_provider_overrides_part_of_it() {
        let text = "[outcomes]\nerror_pct = 80.0\n[providers.email]\ntimeout_pct = 30.0";
        with_env(&[], || assert_eq!(error_key(text), "providers.email"));
    }

    #[test]
    fn providers_inherit_global_outcomes_and_breaker_unless_they_override() {
        let s = with_env(&[], || {
            parse(
                "[outcomes]\nerror_pct = 10.0\nlatency_ms = 5\n\
                 [breaker]\nopen_ms = 100\n\
                 [providers.sms-mms]\nerror_pct = 100.0\n[providers.sms-mms.breaker]\nopen_ms = 7\n\
                 [providers.email]\nseed = \"entropy\"\n",
            )
        })
        .expect("valid");
        assert_eq!(s.providers["sms-mms"].outcomes.error_pct, 100.0);
        assert_eq!(s.providers["sms-mms"].outcomes.latency_ms, 5);
        assert_eq!(s.providers["email"].outcomes.error_pct, 10.0);
        assert_eq!(s.providers["sms-mms"].breaker.open_ms, 7);
        assert_eq!(s.providers["email"].breaker.open_ms, 100);
        assert_eq!(s.providers["sms-mms"].seed, Some(42));
        assert_eq!(s.providers["email"].seed, None);
    }

    #[test]
    fn a_file_naming_one_provider_keeps_the_other_and_both_default_seeds() {
        let s = with_env(&[], || parse("[providers.email]\nerror_pct = 100.0\n")).expect("valid");
        assert_eq!(s.providers.keys().collect::<Vec<_>>(), ["email", "sms-mms"]);
        assert_eq!(s.providers["email"].seed, Some(7));
        assert_eq!(s.providers["email"].outcomes.error_pct, 100.0);
        assert_eq!(s.providers["sms-mms"].seed, Some(42));
        assert_eq!(s.providers["sms-mms"].outcomes.error_pct, 0.0);
    }

    #[test]
    fn a_provider_variable_changes_one_key_and_keeps_every_other_provider() {
        let s = with_env(
            &[
                ("MESSAGING__PROVIDERS__SMS-MMS__ERROR_PCT", "100"),
                ("MESSAGING__PROVIDERS__EMAIL__BREAKER__OPEN_MS", "5"),
            ],
            || parse(""),
        )
        .expect("valid");
        assert_eq!(s.providers["sms-mms"].outcomes.error_pct, 100.0);
        assert_eq!(s.providers["sms-mms"].seed, Some(42));
        assert_eq!(s.providers["email"].seed, Some(7));
        assert_eq!(s.providers["email"].breaker.open_ms, 5);
        assert_eq!(s.providers["email"].breaker.window_size, 20);
    }

    #[test]
    fn environment_overrides_the_file_one_key_at_a_time_keeping_its_type() {
        let s = with_env(
            &[
                ("MESSAGING__SERVER__BIND", "127.0.0.1:0"),
                ("MESSAGING__DATABASE__POOL_SIZE", "3"),
                ("MESSAGING__OUTCOMES__ERROR_PCT", "12.5"),
                ("MESSAGING__ROUTING__EMAIL", "42"),
                ("MESSAGING__PROVIDERS__EMAIL__SEED", "99"),
                ("MESSAGING_CONFIG", "ignored.toml"),
                ("UNRELATED", "x"),
            ],
            || parse("[database]\npool_size = 5\nurl = \"sqlite://file.db\"\n"),
        )
        .expect("valid");
        assert_eq!(s.server.bind, "127.0.0.1:0");
        assert_eq!(s.database.pool_size, 3);
        assert_eq!(s.database.url, "sqlite://file.db");
        assert_eq!(s.outcomes.error_pct, 12.5);
        assert_eq!(s.routing.email, "42");
        assert_eq!(s.providers["email"].seed, Some(99));
    }

    /// A start-up error names the key and what is wrong, never a value that may be a
    /// secret: a URL given to the table instead of its key, a line of TOML that does not
    /// parse, a secret pasted where its variable's name belongs.
    #[test]
    fn a_settings_error_does_not_print_what_may_be_a_secret() {
        let secret = "s3cretPassw0rd";
        let url = format!("postgres://app:{secret}@db/x");
        type Case<'a> = (Vec<(&'a str, &'a str)>, String, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![("MESSAGING__DATABASE", &url)],
                String::new(),
                "database",
            ),
            (
                vec![],
                format!("[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = {url}\n"),
                "test.toml",
            ),
            (
                vec![],
                format!(
                    "[providers.mail]\nkind = \"sendgrid\"\napi_key_env = \"SG.{secret}-x\"\n\
                     [routing]\nemail = \"mail\"\n"
                ),
                "providers.mail.api_key_env",
            ),
            (
                vec![],
                format!("[webhooks]\nsecret_env = \"whsec_{secret}\"\n"),
                "webhooks.secret_env",
            ),
            (
                vec![],
                format!("[callbacks]\nsecret_env = \"{secret}\"\n"),
                "callbacks.secret_env",
            ),
            (
                vec![("MESSAGING__LOG__LEVEL", &url)],
                String::new(),
                "log.level",
            ),
            (
                vec![("MESSAGING__PROVIDERS__EMAIL__KIND", &url)],
                String::new(),
                "providers.email.kind",
            ),
        ];
        for (env, text, key) in cases {
            let err = with_env(&env, || parse(&text)).expect_err("refused");
            assert_eq!(err.key, key, "{err}");
            assert!(!err.to_string().contains(secret), "{err}");
        }
        // Where the key holds a number the wrong text is shown: it cannot be a secret.
        let err = with_env(&[("MESSAGING__DISPATCH__MAX_ATTEMPTS", "lots")], || {
            parse("")
        });
        let err = err.expect_err("refused").to_string();
        assert!(err.contains("\"lots\""), "{err}");
        // And a syntax error still says where.
        let err = with_env(&[], || parse("[database]\nurl = oops\n")).expect_err("refused");
        assert!(err.problem.contains("line 2, column 7"), "{err}");
    }

    #[test]
    fn a_secret_variable_that_is_empty_or_unnamed_is_refused_as_such() {
        let text = "[webhooks]\nsecret_env = \"TEST_HOOK_SECRET\"\n";
        let err = with_env(&[("TEST_HOOK_SECRET", "")], || parse(text)).expect_err("refused");
        assert!(err.problem.contains("is empty"), "{err}");
        let err = with_env(&[], || parse(text)).expect_err("refused");
        assert!(err.problem.contains("is not set"), "{err}");
        let err = with_env(&[], || parse("[webhooks]\nsecret_env = \"\"\n"));
        assert!(err.expect_err("refused").problem.contains("must name"));
    }

    #[test]
    fn values_that_would_misbehave_at_run_time_are_refused_at_start() {
        for (text, key) in [
            ("[dispatch]\nlease_ms = 299\n", "dispatch.lease_ms"),
            ("[breaker]\nwindow_size = 100001\n", "breaker.window_size"),
            (
                "[providers.email.breaker]\nwindow_size = 4294967295\n",
                "providers.email.breaker.window_size",
            ),
            (
                "[database]\nurl = \"sqlite://file::memory:?cache=shared\"\n",
                "database.url",
            ),
            ("[database]\nurl = \"sqlite://file:m.db\"\n", "database.url"),
        ] {
            assert_eq!(with_env(&[], || error_key(text)), key, "{text}");
        }
        let sendgrid = "[routing]\nemail = \"mail\"\n\
                        [providers.mail]\nkind = \"sendgrid\"\napi_key_env = \"TEST_SG_KEY\"\n";
        for subject in ["\"   \"", "\"Hi\\r\\nBcc: x@example.com\""] {
            let text = format!("{sendgrid}default_subject = {subject}\n");
            let err = with_env(&[("TEST_SG_KEY", "k")], || error_key(&text));
            assert_eq!(err, "providers.mail.default_subject", "{subject}");
        }
        // A subject that looks like a number is text; as README says, quoted, a value
        // keeps the text it was written with.
        for (value, subject) in [("2024", "2024"), ("\"007\"", "007")] {
            let s = with_env(
                &[
                    ("TEST_SG_KEY", "k"),
                    ("MESSAGING__PROVIDERS__MAIL__DEFAULT_SUBJECT", value),
                ],
                || parse(sendgrid),
            )
            .expect("a subject");
            assert_eq!(s.providers["mail"].real.default_subject, subject);
        }
        assert!(with_env(&[], || parse("[dispatch]\nlease_ms = 300\n")).is_ok());
    }

    #[test]
    fn a_bad_environment_override_names_the_key() {
        let err = with_env(&[("MESSAGING__DISPATCH__MAX_ATTEMPTS", "lots")], || {
            parse("")
        })
        .expect_err("refused");
        assert_eq!(err.key, "dispatch.max_attempts");
        let err = with_env(&[("MESSAGING__SERVER__PORT", "1")], || parse("")).expect_err("refused");
        assert_eq!(err.key, "server.port");
    }

    #[test]
    fn a_channel_routed_nowhere_is_not_a_settings_error() {
        let s =
            with_env(&[], || parse("[routing]\nemail = \"\"\nsms = \"missing\"")).expect("valid");
        assert_eq!(s.routing.email, "");
    }

    #[test]
    fn a_channel_routed_to_a_real_kind_that_cannot_send_it_is_refused() {
        let sendgrid = "[providers.mail]\nkind = \"sendgrid\"\napi_key_env = \"TEST_SG_KEY\"\n";
        let twilio = "[server]\npublic_url = \"https://x.example\"\n[providers.texts]\n\
                      kind = \"twilio\"\naccount_sid = \"AC1\"\nauth_token_env = \"TEST_TW\"\n";
        with_env(&[("TEST_SG_KEY", "SG.x"), ("TEST_TW", "t")], || {
            let err = parse(&format!("{sendgrid}[routing]\nmms = \"mail\"")).expect_err("mms");
            assert_eq!(err.key, "routing.mms");
            assert!(err.to_string().contains("kind \"sendgrid\""), "{err}");
            assert_eq!(
                error_key(&format!("{twilio}[routing]\nemail = \"texts\"")),
                "routing.email"
            );
            let fitting = format!("{sendgrid}{twilio}[routing]\nemail = \"mail\"\nsms = \"texts\"");
            assert!(parse(&fitting).is_ok());
        });
    }

    #[test]
    fn a_twilio_provider_needs_no_public_url_but_a_bad_sendgrid_key_is_refused_anywhere() {
        let twilio = "[providers.sms-mms]\nkind = \"twilio\"\naccount_sid = \"AC1\"\n\
                      auth_token_env = \"TEST_TW\"\n";
        with_env(&[("TEST_TW", "t")], || {
            let s = parse(twilio).expect("a twilio provider alone starts");
            assert_eq!(s.server.public_url, None);
            // On a simulated provider the key still turns verification on: it must parse.
            let bad_key = "event_webhook_public_key = \"garbage\"\n";
            for (table, name) in [("[providers.email]\n", "email"), ("", "sms-mms")] {
                assert_eq!(
                    error_key(&format!("{twilio}{table}{bad_key}")),
                    format!("providers.{name}.event_webhook_public_key")
                );
            }
        });
    }

    #[test]
    fn errors_print_on_one_line() {
        let err = with_env(&[], || parse("[server\nbind = 1")).expect_err("bad toml");
        assert!(!err.to_string().contains('\n'), "{err}");
        assert!(err.to_string().starts_with("test.toml: "), "{err}");
    }
}
