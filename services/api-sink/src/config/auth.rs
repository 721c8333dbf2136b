//! `[sink.auth]`: how api-sink authenticates, selected by `type`. Secrets are references only
//! (resolved by [`crate::auth::Authenticator::new`] at start), so this section can be printed.

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::{secret_ref, ConfigError, SecretRef};

use super::{check_header_text, check_http_url};

/// `[sink.auth]`, selected by `type`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// No `Authorization` header.
    #[default]
    None,
    /// `Authorization: ApiKey <user>:<key>` (CommCare's API key scheme).
    ApiKey {
        /// The user the key belongs to (for CommCare, the web user's e-mail).
        user: String,
        /// The key.
        #[serde(deserialize_with = "secret_ref")]
        key: SecretRef,
    },
    /// `Authorization: Bearer <token>` with a fixed token.
    Bearer {
        /// The token.
        #[serde(deserialize_with = "secret_ref")]
        token: SecretRef,
    },
    /// `Authorization: Basic …`.
    Basic {
        /// User name (may not contain `:`).
        user: String,
        /// Password.
        #[serde(deserialize_with = "secret_ref")]
        password: SecretRef,
    },
    /// OAuth2 client credentials: a bearer token from `token_url`, cached and refreshed.
    Oauth2ClientCredentials {
        /// The token endpoint.
        token_url: String,
        /// Client id (sent with the secret as HTTP Basic).
        client_id: String,
        /// Client secret.
        #[serde(deserialize_with = "secret_ref")]
        client_secret: SecretRef,
        /// Space-separated scopes to ask for, if the server wants any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

impl AuthConfig {
    /// The `type` name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthConfig::None => "none",
            AuthConfig::ApiKey { .. } => "api_key",
            AuthConfig::Bearer { .. } => "bearer",
            AuthConfig::Basic { .. } => "basic",
            AuthConfig::Oauth2ClientCredentials { .. } => "oauth2_client_credentials",
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            AuthConfig::None | AuthConfig::Bearer { .. } => Ok(()),
            AuthConfig::ApiKey { user, .. } => check_header_text("sink.auth.user", user, false),
            // RFC 7617: the user-id of Basic may not contain `:`.
            AuthConfig::Basic { user, .. } => check_header_text("sink.auth.user", user, true),
            AuthConfig::Oauth2ClientCredentials {
                token_url,
                client_id,
                scope,
                ..
            } => {
                check_http_url("sink.auth.token_url", token_url)?;
                check_header_text("sink.auth.client_id", client_id, true)?;
                if scope.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    return Err(ConfigError::invalid(
                        "sink.auth.scope",
                        "\"\"",
                        "space-separated scopes, or absent",
                    ));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load_text, JSON};

    fn with_auth(auth: &str) -> Result<crate::config::ApiSinkConfig, ConfigError> {
        load_text(&format!("{JSON}[sink.auth]\n{auth}\n"))
    }

    #[test]
    fn auth_variants_parse_by_type() {
        let api_key =
            with_auth("type = \"api_key\"\nuser = \"me@example.org\"\nkey = { env = \"K\" }")
                .unwrap();
        assert_eq!(api_key.sink.auth.kind(), "api_key");
        let oauth = with_auth(
            "type = \"oauth2_client_credentials\"\ntoken_url = \"https://id.example.org/token\"\n\
             client_id = \"snapfeed\"\nclient_secret = { file = \"/run/secrets/s\" }\n\
             scope = \"cases:write\"",
        )
        .unwrap();
        assert_eq!(oauth.sink.auth.kind(), "oauth2_client_credentials");
        assert_eq!(
            with_auth("type = \"none\"").unwrap().sink.auth.kind(),
            "none"
        );
    }

    #[test]
    fn auth_rule_violations_name_their_keys() {
        let basic = with_auth("type = \"basic\"\nuser = \"a:b\"\npassword = { env = \"P\" }")
            .unwrap_err()
            .to_string();
        assert!(basic.starts_with("config key `sink.auth.user`"), "{basic}");
        let unknown = with_auth("type = \"bearer\"\ntoken = { env = \"T\" }\nextra = 1")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("extra"), "{unknown}");
        let url = with_auth(
            "type = \"oauth2_client_credentials\"\ntoken_url = \"token\"\n\
             client_id = \"c\"\nclient_secret = { env = \"S\" }",
        )
        .unwrap_err()
        .to_string();
        assert!(url.starts_with("config key `sink.auth.token_url`"), "{url}");
    }

    #[test]
    fn a_plain_secret_is_refused_without_being_repeated() {
        let error = with_auth("type = \"bearer\"\ntoken = \"hunter2-plain\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("sink.auth"), "{error}");
        assert!(error.contains("secret reference"), "{error}");
        assert!(!error.contains("hunter2-plain"), "{error}");
    }
}
