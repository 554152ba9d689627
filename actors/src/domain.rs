//! The vocabulary of the service: channels, addresses, participants, timestamps and the
//! messages the HTTP layer hands to the core. Validation of one value lives beside its type,
//! so every caller (HTTP, tests, recovery) agrees on what is valid.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// How many attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;
/// Upper bound on an attachment or callback URL, in characters (CONTRACT 10 and the
/// OpenAPI document's `maxLength` count characters), so one field cannot take the whole
/// body budget.
pub const MAX_URL_LEN: usize = 2048;

/// Why a single value was refused; the HTTP layer adds the field name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidValue {
    #[error("must be an E.164 phone number such as +12016661234")]
    PhoneNumber,
    #[error("must be an email address such as user@example.com")]
    EmailAddress,
    #[error("must be an RFC 3339 timestamp such as 2024-11-01T14:00:00Z")]
    Timestamp,
    #[error("must be an http or https URL")]
    Url,
    #[error("must hold at most {MAX_ATTACHMENTS} attachments")]
    TooManyAttachments,
    #[error("must not be empty")]
    Empty,
    #[error("must not contain a NUL character")]
    Nul,
    #[error("is too long: at most {0}")]
    TooLong(usize),
    #[error("must hold at least one URL for an mms")]
    NoAttachments,
    #[error("must not contain control characters")]
    Control,
}

/// Longest provider message id the webhooks take: ids are opaque, bound them like keys.
pub const MAX_PROVIDER_ID_LEN: usize = 255;

/// A string checked once, at the boundary, by `$parse`; what travels inward is proof of
/// the check. Deserialises (and serialises) as a plain JSON string.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(raw: String) -> Result<Self, InvalidValue> {
                let parse: fn(String) -> Result<String, InvalidValue> = $parse;
                parse(raw).map($name)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

fn without_nul(raw: String) -> Result<String, InvalidValue> {
    if raw.contains('\0') {
        Err(InvalidValue::Nul)
    } else {
        Ok(raw)
    }
}

/// No NUL, and something besides whitespace.
fn non_blank(raw: String) -> Result<String, InvalidValue> {
    let raw = without_nul(raw)?;
    if raw.trim().is_empty() {
        Err(InvalidValue::Empty)
    } else {
        Ok(raw)
    }
}

checked_string!(
    /// E.164: `+`, a non-zero digit, then up to 14 more digits.
    PhoneNumber,
    |raw| parse_phone_number(&raw)
);
checked_string!(
    /// See `parse_email_address`.
    EmailAddress,
    |raw| parse_email_address(&raw)
);
checked_string!(
    /// See `parse_attachment_url`.
    AttachmentUrl,
    |raw| parse_attachment_url(&raw)
);
checked_string!(
    /// Any text PostgreSQL can store (no NUL), possibly empty.
    Text,
    without_nul
);
checked_string!(
    /// Text with something in it besides whitespace.
    NonEmptyText,
    non_blank
);
checked_string!(
    /// A provider's id for an inbound message: 1 to 255 characters (as the OpenAPI
    /// document's `maxLength` counts them), opaque.
    ProviderId,
    |raw| {
        let raw = non_blank(raw)?;
        if raw.chars().count() > MAX_PROVIDER_ID_LEN {
            Err(InvalidValue::TooLong(MAX_PROVIDER_ID_LEN))
        } else {
            Ok(raw)
        }
    }
);

checked_string!(
    /// An email subject: 1 to 998 characters (RFC 5322's line limit), not only
    /// whitespace, no control character but a tab (a header cannot hold a line break;
    /// a tab is whitespace a header may hold).
    Subject,
    |raw| {
        let raw = non_blank(raw)?;
        if raw.chars().count() > 998 {
            Err(InvalidValue::TooLong(998))
        } else if raw.chars().any(|c| c.is_control() && c != '\t') {
            Err(InvalidValue::Control)
        } else {
            Ok(raw)
        }
    }
);

checked_string!(
    /// Where a message's final statuses are POSTed: an absolute http(s) URL with a host,
    /// at most 2048 characters.
    CallbackUrl,
    |raw| {
        let raw = without_nul(raw)?;
        let valid = raw.chars().count() <= MAX_URL_LEN
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
            && url::Url::parse(&raw)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if valid {
            Ok(raw)
        } else {
            Err(InvalidValue::Url)
        }
    }
);

/// Up to `MAX_ATTACHMENTS` attachment URLs (possibly none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "Vec<AttachmentUrl>", into = "Vec<String>")]
pub struct Attachments(Vec<AttachmentUrl>);

/// One to `MAX_ATTACHMENTS` attachment URLs: what an MMS needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "Vec<AttachmentUrl>", into = "Vec<String>")]
pub struct MediaAttachments(Vec<AttachmentUrl>);

impl TryFrom<Vec<AttachmentUrl>> for Attachments {
    type Error = InvalidValue;
    fn try_from(urls: Vec<AttachmentUrl>) -> Result<Self, InvalidValue> {
        if urls.len() > MAX_ATTACHMENTS {
            return Err(InvalidValue::TooManyAttachments);
        }
        Ok(Attachments(urls))
    }
}

impl TryFrom<Vec<AttachmentUrl>> for MediaAttachments {
    type Error = InvalidValue;
    fn try_from(urls: Vec<AttachmentUrl>) -> Result<Self, InvalidValue> {
        if urls.is_empty() {
            return Err(InvalidValue::NoAttachments);
        }
        Attachments::try_from(urls).map(|a| MediaAttachments(a.0))
    }
}

impl From<Attachments> for Vec<String> {
    fn from(a: Attachments) -> Vec<String> {
        a.0.into_iter().map(String::from).collect()
    }
}

impl From<MediaAttachments> for Vec<String> {
    fn from(a: MediaAttachments) -> Vec<String> {
        a.0.into_iter().map(String::from).collect()
    }
}

/// The channels a message can travel on. Anything else met in storage is an invalid route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms,
    Mms,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Sms, Channel::Mms, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Mms => "mms",
            Channel::Email => "email",
        }
    }

    pub fn parse(raw: &str) -> Option<Channel> {
        match raw {
            "sms" => Some(Channel::Sms),
            "mms" => Some(Channel::Mms),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Queued,
    Sent,
    Failed,
    Received,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Received => "received",
        }
    }
}

/// An E.164 number: `+`, a non-zero digit, then up to 14 more digits.
pub fn parse_phone_number(raw: &str) -> Result<String, InvalidValue> {
    let digits = raw.strip_prefix('+').ok_or(InvalidValue::PhoneNumber)?;
    let valid = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(InvalidValue::PhoneNumber)
    }
}

/// A pragmatic address check (RFC 5321 lengths, one `@`, a dotted domain of LDH labels).
/// Stricter than a mail server needs to be, looser than the full grammar: it refuses what
/// cannot be delivered anywhere and keeps the address as the client wrote it.
pub fn parse_email_address(raw: &str) -> Result<String, InvalidValue> {
    let (local, domain) = raw.rsplit_once('@').ok_or(InvalidValue::EmailAddress)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if local_ok && domain_ok && raw.len() <= 254 {
        Ok(raw.to_owned())
    } else {
        Err(InvalidValue::EmailAddress)
    }
}

/// Characters that reorder text when displayed: a URL holding one can show a reader a
/// different host than the one it names.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// An absolute http(s) URL with a host, parsed by the `url` crate (WHATWG rules, so the
/// port is 0..=65535); the host must be an IP address or a name of LDH labels. Kept as
/// sent.
pub fn parse_attachment_url(raw: &str) -> Result<String, InvalidValue> {
    if raw.chars().count() > MAX_URL_LEN
        || raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_bidi_control(c))
    {
        return Err(InvalidValue::Url);
    }
    let url = url::Url::parse(raw).map_err(|_| InvalidValue::Url)?;
    // WHATWG forgives `https:///host` and `http:host`; a client that wrote either most
    // likely meant something else, so the authority must follow `://` as written.
    let written_authority = raw
        .get(url.scheme().len()..)
        .and_then(|rest| rest.strip_prefix("://"))
        .is_some_and(|rest| !rest.starts_with(['/', '\\']));
    if !matches!(url.scheme(), "http" | "https") || !written_authority {
        return Err(InvalidValue::Url);
    }
    let host_ok = match url.host() {
        Some(url::Host::Domain(name)) => {
            let name = name.strip_suffix('.').unwrap_or(name);
            !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        }
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        None => false,
    };
    if !host_ok {
        return Err(InvalidValue::Url);
    }
    Ok(raw.to_owned())
}

/// A message timestamp, always held in UTC. On the wire it is RFC 3339 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Timestamp(DateTime<Utc>);

impl TryFrom<String> for Timestamp {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, InvalidValue> {
        Timestamp::parse_rfc3339(&raw)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(Utc::now())
    }

    /// RFC 3339 whose instant, in UTC, falls in years 0000..=9999: outside them the
    /// stored form is no longer RFC 3339 and text order stops being time order.
    pub fn parse_rfc3339(raw: &str) -> Result<Timestamp, InvalidValue> {
        use chrono::Datelike;
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .filter(|t| (0..=9999).contains(&t.year()))
            .map(Timestamp)
            .ok_or(InvalidValue::Timestamp)
    }

    /// Fixed-width UTC form used in the database, so text order is time order. Written
    /// out by hand: it runs several times per message, and chrono's `format` parses its
    /// pattern on every call.
    pub fn to_storage(self) -> String {
        use chrono::{Datelike, Timelike};
        let t = self.0;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_micros().min(999_999)
        )
    }

    pub fn from_storage(raw: &str) -> Option<Timestamp> {
        Timestamp::parse_rfc3339(raw).ok()
    }

    pub fn from_unix_micros(micros: i64) -> Option<Timestamp> {
        DateTime::<Utc>::from_timestamp_micros(micros).map(Timestamp)
    }

    /// Seconds since the Unix epoch (a Standard Webhooks timestamp).
    pub fn unix_seconds(self) -> i64 {
        self.0.timestamp()
    }

    /// Microseconds from `other` to this moment (negative if this is earlier).
    pub fn micros_since(self, other: Timestamp) -> i64 {
        (self.0 - other.0).num_microseconds().unwrap_or(0)
    }

    /// This moment shifted by `micros` (a clock offset), saturating at the ends of time.
    pub fn shifted(self, micros: i64) -> Timestamp {
        Timestamp(
            self.0
                .checked_add_signed(chrono::Duration::microseconds(micros))
                .unwrap_or(if micros < 0 {
                    DateTime::<Utc>::MIN_UTC
                } else {
                    DateTime::<Utc>::MAX_UTC
                }),
        )
    }

    /// This moment plus `delay` (saturating far in the future).
    pub fn after(delay: std::time::Duration) -> Timestamp {
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        Timestamp(
            Utc::now()
                .checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// How long from now until this moment; zero if it has passed.
    pub fn until(self) -> std::time::Duration {
        (self.0 - Utc::now()).to_std().unwrap_or_default()
    }

    /// The shortest RFC 3339 form, as clients usually write it.
    pub fn to_rfc3339(self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

/// The unordered pair of addresses a conversation is keyed on. Emails compare
/// case-insensitively, so they are lower-cased here; the smaller address comes first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Participants {
    pub first: String,
    pub second: String,
}

impl Participants {
    pub fn new(a: &str, b: &str) -> Participants {
        let (a, b) = (normalise_address(a), normalise_address(b));
        if a <= b {
            Participants {
                first: a,
                second: b,
            }
        } else {
            Participants {
                first: b,
                second: a,
            }
        }
    }
}

fn normalise_address(address: &str) -> String {
    if address.contains('@') {
        address.to_lowercase()
    } else {
        address.to_owned()
    }
}

/// Whatever both directions carry: who, what, when, on which channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContent {
    pub channel: Channel,
    pub from: String,
    pub to: String,
    pub body: String,
    /// `None` when the client sent `null` or left it out; kept apart from `[]`.
    pub attachments: Option<Vec<String>>,
    pub timestamp: Timestamp,
    /// An email's subject, when the request gave one.
    pub subject: Option<String>,
}

impl MessageContent {
    pub fn participants(&self) -> Participants {
        Participants::new(&self.from, &self.to)
    }

    /// A digest of what the client asked for, for idempotent replays: two requests with
    /// the same fields (whatever their JSON key order or spacing) share it. Each field is
    /// length-prefixed so that no two different messages can concatenate alike.
    pub fn fingerprint(&self, direction: Direction) -> String {
        self.fingerprint_with(direction, &[])
    }

    /// `fingerprint`, covering also the request's other named values (`status_callback`,
    /// `send_at`) where present, so that a replay with another of them is a conflict.
    pub fn fingerprint_with(&self, direction: Direction, extra: &[(&str, &str)]) -> String {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(direction.as_str().as_bytes());
        field(self.channel.as_str().as_bytes());
        field(self.from.as_bytes());
        field(self.to.as_bytes());
        field(self.body.as_bytes());
        match &self.attachments {
            None => field(b"null"),
            Some(list) => {
                field(&(list.len() as u64).to_le_bytes());
                for url in list {
                    field(url.as_bytes());
                }
            }
        }
        field(self.timestamp.to_storage().as_bytes());
        // Only when present, so that every fingerprint stored before subjects existed
        // still matches its replay.
        if let Some(subject) = &self.subject {
            field(b"subject");
            field(subject.as_bytes());
        }
        for (name, value) in extra {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A replay guard: the client's key plus a digest of what it sent with that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// The digest as this version stores it: tagged with `FINGERPRINT_TAG`.
    pub fingerprint: String,
    /// The same request's digest as versions before 2026-12-07 stored it, untagged: they
    /// folded the configured default callback in when the request named none. Compared
    /// only with untagged stored digests, so a repeat across the upgrade stays the same
    /// request, and two requests told apart now stay apart.
    pub earlier_form: String,
}

/// Marks a stored digest as this version's (the request's own callback only).
const FINGERPRINT_TAG: &str = "2:";

impl IdempotencyKey {
    /// `own`: the digest of the request as sent; `earlier`: as earlier versions made it.
    pub fn new(key: String, own: &str, earlier: String) -> IdempotencyKey {
        IdempotencyKey {
            key,
            fingerprint: format!("{FINGERPRINT_TAG}{own}"),
            earlier_form: earlier,
        }
    }

    /// Whether a stored digest is this request's.
    pub fn matches(&self, stored: Option<&str>) -> bool {
        match stored {
            Some(stored) if stored.starts_with(FINGERPRINT_TAG) => stored == self.fingerprint,
            Some(stored) => stored == self.earlier_form,
            None => false,
        }
    }
}

/// Idempotency keys are 1..=255 visible ASCII characters.
pub fn valid_idempotency_key(raw: &str) -> bool {
    (1..=255).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers_are_accepted() {
        for ok in ["+12016661234", "+18045551234", "+44", "+123456789012345"] {
            assert_eq!(parse_phone_number(ok), Ok(ok.to_owned()), "{ok}");
        }
    }

    #[test]
    fn non_e164_numbers_are_refused() {
        for bad in [
            "",
            "+",
            "12016661234",
            "+0123",
            "+1",
            "+1234567890123456",
            "+1 201 666 1234",
            "+1201666123a",
            "++12016661234",
        ] {
            assert_eq!(
                parse_phone_number(bad),
                Err(InvalidValue::PhoneNumber),
                "{bad}"
            );
        }
    }

    #[test]
    fn ordinary_email_addresses_are_accepted() {
        for ok in [
            "user@usehatchapp.com",
            "Contact@Gmail.com",
            "first.last+tag@mail.example.co.uk",
            "a@b.io",
        ] {
            assert!(parse_email_address(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_email_addresses_are_refused() {
        for bad in [
            "",
            "user",
            "@example.com",
            "user@",
            "user@localhost",
            "user@@example.com",
            "us er@example.com",
            ".user@example.com",
            "user..x@example.com",
            "user@-example.com",
            "user@example..com",
            "user@exa_mple.com",
        ] {
            assert_eq!(
                parse_email_address(bad),
                Err(InvalidValue::EmailAddress),
                "{bad}"
            );
        }
    }

    #[test]
    fn attachment_urls_must_be_http_with_a_host() {
        for ok in [
            "https://example.com/image.jpg",
            "http://example.com",
            "HTTPS://EXAMPLE.COM/x?y=1#z",
            "https://user:pw@example.com:8443/a",
            "http://[::1]:8080/x",
            "http://[::1]/x",
        ] {
            assert!(parse_attachment_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "example.com/image.jpg",
            "ftp://example.com/x",
            "https://",
            "https:///path",
            "https://exa mple.com/",
            "https://example.com:port/",
            "javascript:alert(1)",
            "http://example.com:99999/x",
            "http://-",
            "http://-example.com/",
            "http://exa\u{202E}mple.com/",
            "http://example.com/\u{0}",
        ] {
            assert_eq!(parse_attachment_url(bad), Err(InvalidValue::Url), "{bad}");
        }
    }

    /// CONTRACT 10 and the OpenAPI document's `maxLength` count characters, not bytes:
    /// 2,048 characters of `é` are 4,074 bytes and still a valid URL.
    #[test]
    fn url_and_provider_id_lengths_count_characters() {
        let longest = format!("https://hooks.example/{}", "\u{e9}".repeat(2026));
        assert_eq!(longest.chars().count(), MAX_URL_LEN);
        assert!(parse_attachment_url(&longest).is_ok());
        assert!(CallbackUrl::try_from(longest.clone()).is_ok());
        let over = format!("{longest}\u{e9}");
        assert_eq!(parse_attachment_url(&over), Err(InvalidValue::Url));
        assert_eq!(CallbackUrl::try_from(over).err(), Some(InvalidValue::Url));
        assert!(ProviderId::try_from("\u{e9}".repeat(MAX_PROVIDER_ID_LEN)).is_ok());
        assert_eq!(
            ProviderId::try_from("\u{e9}".repeat(MAX_PROVIDER_ID_LEN + 1)).err(),
            Some(InvalidValue::TooLong(MAX_PROVIDER_ID_LEN))
        );
    }

    #[test]
    fn timestamps_normalise_to_utc_and_sort_as_text() {
        let a = Timestamp::parse_rfc3339("2024-11-01T14:00:00Z").expect("valid");
        let b = Timestamp::parse_rfc3339("2024-11-01T10:00:01-04:00").expect("valid");
        assert!(a < b);
        assert!(a.to_storage() < b.to_storage());
        assert_eq!(a.to_rfc3339(), "2024-11-01T14:00:00Z");
        assert_eq!(b.to_rfc3339(), "2024-11-01T14:00:01Z");
        assert_eq!(Timestamp::from_storage(&a.to_storage()), Some(a));
        for edge in ["9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z"] {
            assert!(Timestamp::parse_rfc3339(edge).is_ok(), "{edge}");
        }
        for bad in [
            "",
            "2024-11-01",
            "2024-11-01 14:00:00",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "9999-12-31T23:59:59-01:00",
            "0000-01-01T00:00:00+01:00",
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(bad),
                Err(InvalidValue::Timestamp),
                "{bad}"
            );
        }
    }

    #[test]
    fn participants_are_unordered_and_emails_case_insensitive() {
        assert_eq!(
            Participants::new("+18045551234", "+12016661234"),
            Participants::new("+12016661234", "+18045551234")
        );
        let pair = Participants::new("User@UseHatchApp.com", "contact@gmail.com");
        assert_eq!(
            pair,
            Participants::new("contact@GMAIL.com", "user@usehatchapp.com")
        );
        assert_eq!(pair.first, "contact@gmail.com");
    }

    fn sms(body: &str, attachments: Option<Vec<String>>) -> MessageContent {
        MessageContent {
            channel: Channel::Sms,
            from: "+12016661234".into(),
            to: "+18045551234".into(),
            body: body.into(),
            attachments,
            timestamp: Timestamp::parse_rfc3339("2024-11-01T14:00:00Z").expect("valid"),
            subject: None,
        }
    }

    #[test]
    fn fingerprints_tell_different_requests_apart() {
        let base = sms("hi", None).fingerprint(Direction::Outbound);
        assert_eq!(base, sms("hi", None).fingerprint(Direction::Outbound));
        assert_eq!(base.len(), 64);
        for other in [
            sms("hi!", None),
            sms("hi", Some(vec![])),
            sms("hi", Some(vec!["https://a.io/x".into()])),
        ] {
            assert_ne!(base, other.fingerprint(Direction::Outbound), "{other:?}");
        }
        let mut email = sms("hi", None);
        email.channel = Channel::Email;
        assert_ne!(base, email.fingerprint(Direction::Outbound));
        assert_ne!(base, sms("hi", None).fingerprint(Direction::Inbound));
    }

    #[test]
    fn a_subject_is_one_header_line_of_at_most_998_characters() {
        let subject = |raw: &str| Subject::try_from(raw.to_owned()).is_ok();
        assert!(subject("Re:\tYour order"));
        assert!(subject(&"é".repeat(998)));
        assert!(!subject(&"é".repeat(999)));
        for refused in [
            "",
            "  ",
            "one\r\nBcc: x@example.com",
            "one\ntwo",
            "bell\u{7}",
        ] {
            assert!(!subject(refused), "{refused:?}");
        }
    }

    #[test]
    fn a_stored_digest_is_compared_in_its_own_version() {
        let key = IdempotencyKey::new("k".into(), "own", "earlier".into());
        assert!(key.matches(Some("2:own")));
        assert!(key.matches(Some("earlier")));
        assert!(
            !key.matches(Some("2:earlier")),
            "a tagged digest is this version's"
        );
        assert!(
            !key.matches(Some("own")),
            "an untagged one is an earlier version's"
        );
        assert!(!key.matches(None));
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(valid_idempotency_key("abc-123_XYZ"));
        assert!(valid_idempotency_key(&"k".repeat(255)));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key(&"k".repeat(256)));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key("ключ"));
    }
}
