//! Typed settings (CONTRACT section 2): read from `--config`, `MESSAGING_CONFIG` or
//! `./settings.toml`, overridden per key by `MESSAGING__SECTION__KEY`, and validated once
//! at start-up. Every problem comes back as one `SettingsError` naming the key, so that
//! `main` can print one line and exit 2.

use std::collections::BTreeMap;
use std::fmt;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variables that override one key each start with this.
const ENV_PREFIX: &str = "MESSAGING__";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub dispatch: DispatchSettings,
    pub outcomes: OutcomeSettings,
    pub breaker: BreakerSettings,
    pub routing: RoutingSettings,
    pub providers: BTreeMap<String, ProviderSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: String,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomeSettings {
    pub timeout_pct: f64,
    pub error_pct: f64,
    pub ratelimit_pct: f64,
    pub latency_ms: u64,
    pub timeout_ms: u64,
}

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
    pub sms: String,
    pub mms: String,
    pub email: String,
}

/// One `[providers.NAME]` table: any `[outcomes]` key, a seed, and `[providers.NAME.breaker]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub breaker: BreakerOverrides,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate_threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_calls: Option<u32>,
}

impl Default for Settings {
    fn default() -> Self {
        let provider = |seed| ProviderSettings {
            seed: Some(seed),
            ..ProviderSettings::default()
        };
        Settings {
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            log: LogSettings::default(),
            dispatch: DispatchSettings::default(),
            outcomes: OutcomeSettings::default(),
            breaker: BreakerSettings::default(),
            routing: RoutingSettings::default(),
            providers: BTreeMap::from([
                ("sms-mms".to_owned(), provider(42)),
                ("email".to_owned(), provider(7)),
            ]),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 262_144,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://messaging.db".to_owned(),
            pool_size: 8,
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

/// Reads, overrides and validates the settings.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, SettingsError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            SettingsError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?,
        None => String::new(),
    };
    let source = file.map_or_else(|| "settings".to_owned(), |p| p.display().to_string());
    from_toml(&text, &source, env)
}

/// The same as `load` for settings held in a string (used by tests and `load`).
pub fn from_toml(
    text: &str,
    source: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, SettingsError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::new(source, format!("not valid TOML: {e}")))?;
    let defaults = toml::Table::try_from(Settings::default())
        .map_err(|e| SettingsError::new(source, e.to_string()))?;
    for (name, value) in env {
        if let Some(path) = name.strip_prefix(ENV_PREFIX) {
            apply_override(&mut table, &defaults, &name, path, value)?;
        }
    }
    let settings: Settings =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { source.to_owned() } else { key };
            SettingsError::new(key, e.into_inner().to_string())
        })?;
    settings.validate()?;
    Ok(settings)
}

/// Sets one key from `MESSAGING__A__B=value`. The value keeps the type the key has by
/// default (a string stays a string even if it looks like a number); otherwise it is read
/// as a TOML value, falling back to a string, and the typed parse reports any mismatch.
fn apply_override(
    table: &mut toml::Table,
    defaults: &toml::Table,
    name: &str,
    path: &str,
    raw: String,
) -> Result<(), SettingsError> {
    let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err(SettingsError::new(name, "empty key segment"));
    }
    let default_is_string = lookup(defaults, &keys).is_some_and(toml::Value::is_str);
    let value = if default_is_string {
        toml::Value::String(raw)
    } else {
        format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw))
    };
    let (last, parents) = keys
        .split_last()
        .ok_or_else(|| SettingsError::new(name, "no key named"))?;
    let mut target = table;
    for key in parents {
        let entry = target
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        target = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(SettingsError::new(name, format!("`{key}` is not a table"))),
        };
    }
    target.insert(last.clone(), value);
    Ok(())
}

fn lookup<'a>(table: &'a toml::Table, keys: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = keys.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(key)?.as_table()?;
    }
    current.get(last)
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
            self.window_size >= 1,
            &key("window_size"),
            "must be at least 1",
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
        check(d.lease_ms >= 1, "dispatch.lease_ms", "must be at least 1")?;
        self.outcomes.validate("outcomes")?;
        self.breaker.validate("breaker")?;
        for name in self.providers.keys() {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            check(
                valid,
                &format!("providers.{name}"),
                "a provider name is 1 to 64 letters, digits, '-', '_' or '.'",
            )?;
            self.outcomes_for(name)
                .validate(&format!("providers.{name}"))?;
            self.breaker_for(name)
                .validate(&format!("providers.{name}.breaker"))?;
        }
        Ok(())
    }

    /// A provider's outcome settings: its own values over the global `[outcomes]`.
    pub fn outcomes_for(&self, provider: &str) -> OutcomeSettings {
        let global = &self.outcomes;
        let Some(p) = self.providers.get(provider) else {
            return global.clone();
        };
        OutcomeSettings {
            timeout_pct: p.timeout_pct.unwrap_or(global.timeout_pct),
            error_pct: p.error_pct.unwrap_or(global.error_pct),
            ratelimit_pct: p.ratelimit_pct.unwrap_or(global.ratelimit_pct),
            latency_ms: p.latency_ms.unwrap_or(global.latency_ms),
            timeout_ms: p.timeout_ms.unwrap_or(global.timeout_ms),
        }
    }

    /// A provider's breaker settings: its own values over the global `[breaker]`.
    pub fn breaker_for(&self, provider: &str) -> BreakerSettings {
        let global = &self.breaker;
        let Some(p) = self.providers.get(provider).map(|p| &p.breaker) else {
            return global.clone();
        };
        BreakerSettings {
            window_size: p.window_size.unwrap_or(global.window_size),
            minimum_calls: p.minimum_calls.unwrap_or(global.minimum_calls),
            failure_rate_threshold: p
                .failure_rate_threshold
                .unwrap_or(global.failure_rate_threshold),
            open_ms: p.open_ms.unwrap_or(global.open_ms),
            half_open_calls: p.half_open_calls.unwrap_or(global.half_open_calls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, SettingsError> {
        from_toml(text, "test.toml", Vec::new())
    }

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        from_toml(text, "test.toml", env.collect::<Vec<_>>())
    }

    fn error_key(text: &str) -> String {
        parse(text).expect_err("should be refused").key
    }

    #[test]
    fn the_committed_settings_file_equals_the_built_in_defaults() {
        let committed = include_str!("../settings.toml");
        assert_eq!(parse(committed), Ok(Settings::default()));
        assert_eq!(parse(""), Ok(Settings::default()));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse("[server]\nbindd = \"x\"").expect_err("unknown key");
        assert_eq!(err.key, "server.bindd");
        assert!(err.problem.contains("unknown field"), "{err}");
        assert_eq!(error_key("[nope]\na = 1"), "nope");
        assert_eq!(
            error_key("[providers.email]\nseeed = 1"),
            "providers.email.seeed"
        );
        assert_eq!(error_key("[routing]\nvoice = \"x\""), "routing.voice");
    }

    #[test]
    fn wrong_types_name_the_key() {
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
    }

    #[test]
    fn out_of_range_values_name_the_key() {
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
            error_key("[dispatch]\nmax_attempts = 0"),
            "dispatch.max_attempts"
        );
        assert_eq!(error_key("[providers.\"a b\"]\nseed = 1"), "providers.a b");
    }

    #[test]
    fn a_global_sum_over_100_is_refused_even_if_a_provider_overrides_part_of_it() {
        let text = "[outcomes]\nerror_pct = 80.0\n[providers.email]\ntimeout_pct = 30.0";
        assert_eq!(error_key(text), "providers.email");
    }

    #[test]
    fn providers_inherit_global_outcomes_and_breaker_unless_they_override() {
        let s = parse(
            "[outcomes]\nerror_pct = 10.0\nlatency_ms = 5\n\
             [breaker]\nopen_ms = 100\n\
             [providers.sms-mms]\nerror_pct = 100.0\n[providers.sms-mms.breaker]\nopen_ms = 7\n\
             [providers.email]\n",
        )
        .expect("valid");
        assert_eq!(s.outcomes_for("sms-mms").error_pct, 100.0);
        assert_eq!(s.outcomes_for("sms-mms").latency_ms, 5);
        assert_eq!(s.outcomes_for("email").error_pct, 10.0);
        assert_eq!(s.breaker_for("sms-mms").open_ms, 7);
        assert_eq!(s.breaker_for("email").open_ms, 100);
        assert_eq!(s.providers["email"].seed, None);
    }

    #[test]
    fn environment_overrides_one_key_keeping_its_type() {
        let s = parse_env(
            "",
            &[
                ("MESSAGING__SERVER__BIND", "127.0.0.1:0"),
                ("MESSAGING__DATABASE__POOL_SIZE", "3"),
                ("MESSAGING__OUTCOMES__ERROR_PCT", "12.5"),
                ("MESSAGING__ROUTING__EMAIL", "42"),
                ("MESSAGING__PROVIDERS__EMAIL__SEED", "99"),
                ("MESSAGING_CONFIG", "ignored.toml"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(s.server.bind, "127.0.0.1:0");
        assert_eq!(s.database.pool_size, 3);
        assert_eq!(s.outcomes.error_pct, 12.5);
        assert_eq!(s.routing.email, "42");
        assert_eq!(s.providers["email"].seed, Some(99));
    }

    #[test]
    fn a_bad_environment_override_names_the_key() {
        let err =
            parse_env("", &[("MESSAGING__DISPATCH__MAX_ATTEMPTS", "lots")]).expect_err("refused");
        assert_eq!(err.key, "dispatch.max_attempts");
        let err = parse_env("", &[("MESSAGING__SERVER__PORT", "1")]).expect_err("refused");
        assert_eq!(err.key, "server.port");
    }

    #[test]
    fn a_channel_routed_nowhere_is_not_a_settings_error() {
        let s = parse("[routing]\nemail = \"\"\nsms = \"missing\"").expect("valid");
        assert_eq!(s.routing.email, "");
    }

    #[test]
    fn errors_print_on_one_line() {
        let err = parse("[server\nbind = 1").expect_err("bad toml");
        assert!(!err.to_string().contains('\n'), "{err}");
        assert!(err.to_string().starts_with("test.toml: "), "{err}");
    }
}
