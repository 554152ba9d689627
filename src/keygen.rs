//! `messaging-service keygen NAME`: a new API key from the operating system's generator
//! (32 bytes), printed once, with the `[auth.keys.NAME]` lines to paste. Only the key's
//! SHA-256 goes into the settings; the key itself is shown here and nowhere else.

use std::process::ExitCode;

use base64::Engine as _;
use rand_core::{OsRng, TryRngCore};
use sha2::{Digest, Sha256};

use crate::settings::valid_name;

/// Bytes of randomness in a key: 256 bits.
const KEY_BYTES: usize = 32;

pub fn run(name: &str) -> ExitCode {
    if !valid_name(name) {
        eprintln!(
            "messaging-service: keygen: a key name is 1 to 64 letters, digits, '-', '_' or '.'"
        );
        return ExitCode::from(2);
    }
    let mut bytes = [0u8; KEY_BYTES];
    if let Err(e) = OsRng.try_fill_bytes(&mut bytes) {
        eprintln!("messaging-service: keygen: the OS random generator failed: {e}");
        return ExitCode::FAILURE;
    }
    let key = format!(
        "msk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("# The API key for {name}, shown this once (send it as Authorization: Bearer KEY):");
    println!("{key}");
    println!();
    println!("# Paste into settings.toml (choose its scopes: send, read, admin):");
    // A '.' in a bare TOML key would make nested tables; quoted, the name stays one key.
    if name.contains('.') {
        println!("[auth.keys.\"{name}\"]");
    } else {
        println!("[auth.keys.{name}]");
    }
    println!("sha256 = \"{hash}\"");
    println!("scopes = [\"send\", \"read\"]");
    println!("# rate_limit_per_min = 6000");
    ExitCode::SUCCESS
}
