//! Keeping secrets out of config files, logs and `check-config` output: a secret is given by
//! reference ([`SecretRef`]: an environment variable or a file) and resolved at start into a
//! [`Secret`] whose `Debug` never shows it, and [`redacted_toml`] prints the effective
//! configuration with every value under a secret-looking key replaced. The limit: redaction
//! goes by key name (`password`, `secret`, `token`, …), so a secret under an innocent name
//! (say, in a URL) is printed as is.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::ConfigError;

/// Key names whose values are secrets: redacted by [`redacted_toml`] and never logged.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // Where a secret lives is not a secret (e.g. an OAuth2 `token_url`).
    if key.ends_with("_url") || key.ends_with(".url") || key.ends_with(".location") {
        return false;
    }
    [
        "password",
        "secret",
        "token",
        "jaas",
        "ssl.key.pem",
        "credentials",
    ]
    .iter()
    .any(|marker| key.contains(marker))
}

/// The effective configuration as TOML, with every secret value replaced by `"<redacted>"`.
/// This is what `check-config` prints.
pub fn redacted_toml<C: Serialize>(config: &C) -> Result<String, ConfigError> {
    let mut value = toml::Value::try_from(config).map_err(|error| ConfigError::Invalid {
        key: "(top level)".into(),
        value: "(effective config)".into(),
        expected: format!("a configuration that can be rendered as TOML ({error})"),
    })?;
    redact(&mut value);
    toml::to_string_pretty(&value).map_err(|error| ConfigError::Invalid {
        key: "(top level)".into(),
        value: "(effective config)".into(),
        expected: format!("a configuration that can be rendered as TOML ({error})"),
    })
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                if is_secret_key(key) && !matches!(inner, toml::Value::Table(_)) {
                    *inner = toml::Value::String("<redacted>".into());
                } else {
                    redact(inner);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A secret given by reference — the name of an environment variable or a file path — never by
/// value in the TOML file, so config files and `check-config` output can be shared.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    /// Read from this environment variable at start.
    Env(String),
    /// Read from this file at start (e.g. a mounted Kubernetes Secret); surrounding whitespace trimmed.
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "SecretRef::Env({name})"),
            SecretRef::File(path) => write!(f, "SecretRef::File({})", path.display()),
        }
    }
}

/// A resolved secret: its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret whose value is already in hand — a test, or a stub that must expect the
    /// credentials a client sends. Configuration gives secrets by reference ([`SecretRef`]).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value, for building a request or a client config — never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretRef {
    /// Reads the secret; `key` names the config key in the error.
    pub fn resolve(&self, key: &str) -> Result<Secret, ConfigError> {
        match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Secret(value)),
                _ => Err(ConfigError::invalid(
                    key,
                    format!("env {name:?}"),
                    "an environment variable that is set and not empty",
                )),
            },
            SecretRef::File(path) => match std::fs::read_to_string(path) {
                Ok(value) if !value.trim().is_empty() => Ok(Secret(value.trim().to_string())),
                Ok(_) => Err(ConfigError::invalid(
                    key,
                    format!("file {}", path.display()),
                    "a non-empty file",
                )),
                Err(error) => Err(ConfigError::invalid(
                    key,
                    format!("file {}", path.display()),
                    format!("a readable file ({error})"),
                )),
            },
        }
    }
}

/// Deserializes a [`SecretRef`] (`#[serde(deserialize_with = "secret_ref")]`), refusing a plain value without repeating it: serde's own message for a
/// string here would quote it ("unknown variant `hunter2`"), and a config error is printed.
pub fn secret_ref<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SecretRef, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Ref(SecretRef),
        Other(serde::de::IgnoredAny),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Ref(secret) => Ok(secret),
        Raw::Other(_) => Err(serde::de::Error::custom(
            "expected a secret reference, `{ env = \"VAR\" }` or `{ file = \"/path\" }` \
             (never the secret itself)",
        )),
    }
}

/// The `Authorization` value of HTTP Basic (RFC 7617): `Basic ` and base64 of `user:password`.
/// One encoder for every client that sends it (the API client, the schema registry client).
pub fn basic_authorization(user: &str, password: &Secret) -> String {
    format!(
        "Basic {}",
        base64(format!("{user}:{}", password.expose()).as_bytes())
    )
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{env, write, Sample};
    use super::*;
    use crate::config::load;

    #[test]
    fn redaction_hides_secrets_only() {
        let config: Sample = load(
            None,
            env(&[
                ("SNAPFEED_KAFKA__BOOTSTRAP_SERVERS", "k:9092"),
                (
                    "SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_PASSWORD",
                    "hunter2",
                ),
                ("SNAPFEED_KAFKA__LIBRDKAFKA_OPTIONS__SASL_USERNAME", "svc"),
            ]),
        )
        .unwrap();
        let text = redacted_toml(&config).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(text.contains("svc"), "{text}");
        assert!(text.contains("k:9092"), "{text}");
    }

    #[test]
    fn secrets_resolve_from_file_and_never_debug_print() {
        let file = write("  s3cr3t\n");
        let secret = SecretRef::File(file.path().to_path_buf())
            .resolve("api.auth.key")
            .unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        let missing = SecretRef::Env("SNAPFEED_TEST_SURELY_UNSET_VAR".into())
            .resolve("api.auth.key")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("api.auth.key"), "{missing}");
    }

    #[test]
    fn basic_authorization_is_rfc_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            basic_authorization("Aladdin", &Secret::new("open sesame")),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(
            basic_authorization("snapfeed", &Secret::new("secret")),
            "Basic c25hcGZlZWQ6c2VjcmV0"
        );
    }
}
