//! The `Authorization` header of every API request, from `[sink.auth]`: none, CommCare's
//! `ApiKey user:key`, a fixed bearer token, HTTP Basic, or an OAuth2 client-credentials token.
//!
//! Secrets are resolved once, at start ([`Authenticator::new`]); a missing one stops the
//! service with an error naming the key. An OAuth2 token is fetched on first use, cached, and
//! refreshed once 80% of its `expires_in` has passed — early enough that a failed refresh can
//! fall back on the still-valid token. After a 401 the caller hands the rejected header to
//! [`Authenticator::invalidate`] and retries the request once with a fresh one.
//!
//! Secrets and tokens never appear in `Debug` output, errors or logs: headers are marked
//! sensitive, and every type here has a hand-written `Debug`. An auth failure is never the
//! change's fault, so the caller retries it like a transient failure and never dead-letters
//! the change for it.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Url;
use serde::Deserialize;
use snapfeed_runtime::config::{basic_authorization, ConfigError, Secret};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::AuthConfig;

/// Share of a token's lifetime after which it is refreshed.
const REFRESH_AT_SHARE: f64 = 0.8;

/// Why no `Authorization` header could be had. Names the token endpoint, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint could not be reached or did not answer in time.
    #[error("OAuth2 token request to {url} failed: {source}")]
    TokenRequest {
        /// The token endpoint.
        url: String,
        /// The client error.
        source: reqwest::Error,
    },
    /// The token endpoint refused.
    #[error("OAuth2 token endpoint {url} answered {status}{}", oauth_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    TokenRefused {
        /// The token endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The OAuth2 `error` code, e.g. `invalid_client`, if the body had one.
        oauth_error: Option<String>,
    },
    /// The token endpoint answered 2xx without a usable bearer token.
    #[error("OAuth2 token endpoint {url} answered without a usable token: {problem}")]
    TokenUnusable {
        /// The token endpoint.
        url: String,
        /// What is wrong with the answer.
        problem: &'static str,
    },
}

impl AuthError {
    /// Metric label: `token_request`, `token_refused` or `token_unusable`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::TokenRequest { .. } => "token_request",
            AuthError::TokenRefused { .. } => "token_refused",
            AuthError::TokenUnusable { .. } => "token_unusable",
        }
    }
}

/// Produces the `Authorization` header for API requests; shared (`Arc`) by every lane.
pub struct Authenticator {
    scheme: Scheme,
}

enum Scheme {
    None,
    /// ApiKey, Bearer or Basic: one header for the life of the process.
    Static {
        kind: &'static str,
        header: HeaderValue,
    },
    /// Boxed: one per process, and much larger than the other variants.
    OAuth2(Box<OAuth2>),
}

struct OAuth2 {
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    scope: Option<String>,
    /// Bound on one token request.
    timeout: Duration,
    /// The current token; the lock is held across a fetch, so concurrent callers wait for
    /// one token request instead of each sending their own.
    cached: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    header: HeaderValue,
    /// When to fetch a new one; `None` when the server gave no lifetime (then only a 401
    /// replaces it).
    refresh_at: Option<Instant>,
    /// When the server stops accepting it; a failed refresh before then keeps using it.
    expires_at: Option<Instant>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            Scheme::None => f.write_str("Authenticator(none)"),
            Scheme::Static { kind, .. } => write!(f, "Authenticator({kind}, <redacted>)"),
            Scheme::OAuth2(oauth) => f
                .debug_struct("Authenticator")
                .field("type", &"oauth2_client_credentials")
                .field("token_url", &oauth.token_url.as_str())
                .field("client_id", &oauth.client_id)
                .field("client_secret", &oauth.client_secret)
                .field("scope", &oauth.scope)
                .finish_non_exhaustive(),
        }
    }
}

impl Authenticator {
    /// Resolves the secrets of `[sink.auth]` and builds the static header, if any.
    /// `request_timeout` bounds each OAuth2 token request.
    pub fn new(config: &AuthConfig, request_timeout: Duration) -> Result<Self, ConfigError> {
        let scheme = match config {
            AuthConfig::None => Scheme::None,
            AuthConfig::ApiKey { user, key } => {
                let key = key.resolve("sink.auth.key")?;
                Scheme::Static {
                    kind: "api_key",
                    header: sensitive_header(
                        format!("ApiKey {user}:{}", key.expose()),
                        "sink.auth.key",
                    )?,
                }
            }
            AuthConfig::Bearer { token } => {
                let token = token.resolve("sink.auth.token")?;
                Scheme::Static {
                    kind: "bearer",
                    header: sensitive_header(
                        format!("Bearer {}", token.expose()),
                        "sink.auth.token",
                    )?,
                }
            }
            AuthConfig::Basic { user, password } => {
                let password = password.resolve("sink.auth.password")?;
                Scheme::Static {
                    kind: "basic",
                    header: sensitive_header(
                        basic_authorization(user, &password),
                        "sink.auth.password",
                    )?,
                }
            }
            AuthConfig::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let token_url = Url::parse(token_url).map_err(|error| {
                    ConfigError::invalid(
                        "sink.auth.token_url",
                        format!("{token_url:?}"),
                        format!("a URL ({error})"),
                    )
                })?;
                Scheme::OAuth2(Box::new(OAuth2 {
                    token_url,
                    client_id: client_id.clone(),
                    client_secret: client_secret.resolve("sink.auth.client_secret")?,
                    scope: scope.clone(),
                    timeout: request_timeout,
                    cached: Mutex::new(None),
                }))
            }
        };
        Ok(Authenticator { scheme })
    }

    /// The `Authorization` header for the next request (`None` without auth), fetching an
    /// OAuth2 token when there is none or it is due for refresh.
    pub async fn header(&self, client: &reqwest::Client) -> Result<Option<HeaderValue>, AuthError> {
        self.header_at(client, Instant::now()).await
    }

    /// [`Authenticator::header`] as of `now`: token lifetimes are judged on this clock.
    pub async fn header_at(
        &self,
        client: &reqwest::Client,
        now: Instant,
    ) -> Result<Option<HeaderValue>, AuthError> {
        match &self.scheme {
            Scheme::None => Ok(None),
            Scheme::Static { header, .. } => Ok(Some(header.clone())),
            Scheme::OAuth2(oauth) => oauth.header(client, now).await.map(Some),
        }
    }

    /// Forgets the OAuth2 token that earned a 401, so the next [`Authenticator::header`]
    /// fetches a new one. Only that token: if another lane already replaced it, the newer
    /// token stays. A no-op for the static schemes (a fixed credential cannot be renewed).
    pub async fn invalidate(&self, rejected: &HeaderValue) {
        if let Scheme::OAuth2(oauth) = &self.scheme {
            let mut cached = oauth.cached.lock().await;
            if cached
                .as_ref()
                .is_some_and(|token| token.header == rejected)
            {
                *cached = None;
            }
        }
    }
}

impl OAuth2 {
    async fn header(
        &self,
        client: &reqwest::Client,
        now: Instant,
    ) -> Result<HeaderValue, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref() {
            if token.refresh_at.is_none_or(|at| now < at) {
                return Ok(token.header.clone());
            }
        }
        match self.fetch(client, now).await {
            Ok(token) => {
                let header = token.header.clone();
                *cached = Some(token);
                Ok(header)
            }
            Err(error) => match cached.as_ref() {
                // Refreshing early pays off here: the old token is still good for a while.
                Some(token) if token.expires_at.is_some_and(|at| now < at) => {
                    tracing::warn!(
                        message = "OAuth2 token refresh failed; using the current token until it expires.",
                        %error,
                        reason = error.reason(),
                    );
                    Ok(token.header.clone())
                }
                _ => Err(error),
            },
        }
    }

    /// One client-credentials grant (RFC 6749 §4.4): the client id and secret as HTTP Basic,
    /// each form-urlencoded first (§2.3.1).
    async fn fetch(
        &self,
        client: &reqwest::Client,
        now: Instant,
    ) -> Result<CachedToken, AuthError> {
        let url = || self.token_url.to_string();
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.as_str()));
        }
        let response = client
            .post(self.token_url.clone())
            .basic_auth(
                form_urlencode(&self.client_id),
                Some(form_urlencode(self.client_secret.expose())),
            )
            .header(ACCEPT, "application/json")
            .form(&form)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|source| AuthError::TokenRequest { url: url(), source })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| AuthError::TokenRequest { url: url(), source })?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct OAuthError {
                error: String,
            }
            let oauth_error = serde_json::from_slice::<OAuthError>(&body)
                .ok()
                .map(|e| e.error.chars().take(64).collect());
            return Err(AuthError::TokenRefused {
                url: url(),
                status: status.as_u16(),
                oauth_error,
            });
        }
        let unusable = |problem| AuthError::TokenUnusable {
            url: url(),
            problem,
        };
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            token_type: Option<String>,
            /// Seconds; some servers send a string.
            expires_in: Option<serde_json::Value>,
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| unusable("not a JSON object with an access_token"))?;
        if token
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(unusable("token_type is not Bearer"));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.access_token))
            .map_err(|_| unusable("access_token is not a valid header value"))?;
        header.set_sensitive(true);
        let lifetime = token
            .expires_in
            .as_ref()
            .and_then(|v| match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
            .filter(|secs| secs.is_finite())
            .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 1e9)));
        Ok(CachedToken {
            header,
            refresh_at: lifetime.map(|l| now + l.mul_f64(REFRESH_AT_SHARE)),
            expires_at: lifetime.map(|l| now + l),
        })
    }
}

/// A header value marked sensitive (hyper keeps it out of its own debug output); `key` names
/// the secret in the error, which never shows the value.
fn sensitive_header(value: String, key: &str) -> Result<HeaderValue, ConfigError> {
    let mut header = HeaderValue::from_str(&value).map_err(|_| {
        ConfigError::invalid(
            key,
            "(secret, not shown)",
            "only characters allowed in an HTTP header (no control characters or newlines)",
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use snapfeed_harness::stub_api::{StubApi, TOKEN_PATH};
    use snapfeed_runtime::config::SecretRef;

    use super::*;

    const SECRET: &str = "s3cr3t-v@lue";

    /// A secret file holding `value`; kept alive by the returned guard.
    fn secret_file(value: &str) -> (tempfile::NamedTempFile, SecretRef) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{value}\n")).unwrap();
        let reference = SecretRef::File(file.path().to_path_buf());
        (file, reference)
    }

    async fn static_header(config: AuthConfig) -> HeaderValue {
        let auth = Authenticator::new(&config, Duration::from_secs(5)).unwrap();
        let debug = format!("{auth:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        let header = auth.header(&reqwest::Client::new()).await.unwrap().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains(SECRET));
        header
    }

    #[tokio::test]
    async fn static_schemes_build_their_headers() {
        let (_file, key) = secret_file(SECRET);
        let api_key = static_header(AuthConfig::ApiKey {
            user: "me@example.org".into(),
            key: key.clone(),
        })
        .await;
        assert_eq!(api_key, format!("ApiKey me@example.org:{SECRET}").as_str());
        let bearer = static_header(AuthConfig::Bearer { token: key.clone() }).await;
        assert_eq!(bearer, format!("Bearer {SECRET}").as_str());
        let (_file, password) = secret_file("pass");
        let basic = static_header(AuthConfig::Basic {
            user: "user".into(),
            password,
        })
        .await;
        assert_eq!(basic, "Basic dXNlcjpwYXNz");
        let none = Authenticator::new(&AuthConfig::None, Duration::from_secs(1)).unwrap();
        assert_eq!(none.header(&reqwest::Client::new()).await.unwrap(), None);
    }

    #[test]
    fn a_missing_secret_names_its_key_and_a_bad_one_is_not_shown() {
        let missing = AuthConfig::Bearer {
            token: SecretRef::File(PathBuf::from("/nonexistent/snapfeed-token")),
        };
        let error = Authenticator::new(&missing, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config key `sink.auth.token`"), "{error}");
        let (_file, newline) = secret_file("line1\nline2");
        let error = Authenticator::new(
            &AuthConfig::Bearer { token: newline },
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains("line1"), "{error}");
        assert!(error.contains("sink.auth.token"), "{error}");
    }

    #[test]
    fn encodings_match_their_rfcs() {
        assert_eq!(form_urlencode("a b+c/d~é"), "a+b%2Bc%2Fd%7E%C3%A9");
    }

    fn oauth(api: &StubApi, secret: SecretRef) -> Authenticator {
        let config = AuthConfig::Oauth2ClientCredentials {
            token_url: format!("{}{TOKEN_PATH}", api.url()),
            client_id: "snapfeed".into(),
            client_secret: secret,
            scope: Some("cases:write".into()),
        };
        Authenticator::new(&config, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn an_oauth2_token_is_fetched_once_and_cached() {
        let api = StubApi::start().await;
        let (_file, secret) = secret_file(SECRET);
        let auth = oauth(&api, secret);
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let header = auth.header(&client).await.unwrap().unwrap();
            assert_eq!(header, "Bearer tok-1");
            assert!(header.is_sensitive());
        }
        assert_eq!(api.token_requests(), 1);
        let debug = format!("{auth:?}");
        assert!(
            !debug.contains(SECRET) && !debug.contains("tok-1"),
            "{debug}"
        );
        assert!(debug.contains("snapfeed"), "{debug}");
    }

    #[tokio::test]
    async fn an_oauth2_token_is_refreshed_ahead_of_expiry() {
        let api = StubApi::start().await;
        api.set_token_ttl(Duration::from_secs(100));
        let (_file, secret) = secret_file(SECRET);
        let auth = oauth(&api, secret);
        let client = reqwest::Client::new();
        let start = Instant::now();
        assert_eq!(
            auth.header_at(&client, start).await.unwrap().unwrap(),
            "Bearer tok-1"
        );
        let before = start + Duration::from_secs(79);
        assert_eq!(
            auth.header_at(&client, before).await.unwrap().unwrap(),
            "Bearer tok-1"
        );
        let after = start + Duration::from_secs(81);
        assert_eq!(
            auth.header_at(&client, after).await.unwrap().unwrap(),
            "Bearer tok-2"
        );
        assert_eq!(api.token_requests(), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_unexpired_token_then_fails() {
        let mut api = StubApi::start().await;
        api.set_token_ttl(Duration::from_secs(100));
        let (_file, secret) = secret_file(SECRET);
        let auth = oauth(&api, secret);
        let client = reqwest::Client::new();
        let start = Instant::now();
        auth.header_at(&client, start).await.unwrap();
        api.go_down().await;
        let due = start + Duration::from_secs(90);
        assert_eq!(
            auth.header_at(&client, due).await.unwrap().unwrap(),
            "Bearer tok-1"
        );
        let expired = start + Duration::from_secs(101);
        let error = auth.header_at(&client, expired).await.unwrap_err();
        assert_eq!(error.reason(), "token_request");
        assert!(!error.to_string().contains(SECRET));
    }

    #[tokio::test]
    async fn after_a_401_the_rejected_token_is_replaced_once() {
        let api = StubApi::start().await;
        api.require_bearer(true);
        let (_file, secret) = secret_file(SECRET);
        let auth = oauth(&api, secret);
        let client = reqwest::Client::new();
        let send = |header: HeaderValue| {
            client
                .post(format!("{}/cases", api.url()))
                .header(reqwest::header::AUTHORIZATION, header)
                .send()
        };
        let first = auth.header(&client).await.unwrap().unwrap();
        assert_eq!(send(first.clone()).await.unwrap().status(), 200);
        api.expire_tokens();
        assert_eq!(send(first.clone()).await.unwrap().status(), 401);
        auth.invalidate(&first).await;
        let fresh = auth.header(&client).await.unwrap().unwrap();
        assert_eq!(fresh, "Bearer tok-2");
        assert_eq!(send(fresh.clone()).await.unwrap().status(), 200);
        // A late 401 for the old token does not throw away the new one.
        auth.invalidate(&first).await;
        assert_eq!(auth.header(&client).await.unwrap().unwrap(), fresh);
        assert_eq!(api.token_requests(), 2);
    }

    #[tokio::test]
    async fn a_token_endpoint_that_refuses_or_answers_nonsense_is_an_error() {
        let api = StubApi::start().await;
        let (_file, secret) = secret_file(SECRET);
        let client = reqwest::Client::new();
        // Not the token endpoint: the stub answers 200 `{"id": …}`, which holds no token.
        let wrong_path = AuthConfig::Oauth2ClientCredentials {
            token_url: format!("{}/cases", api.url()),
            client_id: "snapfeed".into(),
            client_secret: secret,
            scope: None,
        };
        let auth = Authenticator::new(&wrong_path, Duration::from_secs(5)).unwrap();
        let error = auth.header(&client).await.unwrap_err();
        assert_eq!(error.reason(), "token_unusable", "{error}");
        api.set_default_reply(
            snapfeed_harness::stub_api::Reply::status(401)
                .with_body(r#"{"error":"invalid_client"}"#),
        );
        let error = auth.header(&client).await.unwrap_err();
        assert_eq!(error.reason(), "token_refused", "{error}");
        assert!(error.to_string().contains("invalid_client"), "{error}");
        assert!(!error.to_string().contains(SECRET), "{error}");
    }
}
