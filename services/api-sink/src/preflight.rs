//! api-sink's own preflight checks (`check-config --connect`): the dataset mapping, the request
//! profile (templates render), the credentials (an OAuth2 token is fetched), and the API
//! answering at `sink.api_url`.
//!
//! The API check sends one `GET sink.api_url` with the credentials: no case is written. Any
//! HTTP answer means the API is reachable; 401 or 403 means it refuses the credentials. A
//! static key or token is otherwise only checked to resolve — no call proves it without a
//! side effect on every API.

use std::future::Future;
use std::time::Instant;

use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::preflight::{mapping_check, Check, ServiceChecks};

use crate::auth::Authenticator;
use crate::config::ApiSinkConfig;
use crate::request::RequestBuilder;

impl ServiceChecks for ApiSinkConfig {
    fn service_checks<'a>(
        &'a self,
        schemas: Option<&'a SchemaStore>,
    ) -> impl Future<Output = Vec<Check>> + 'a {
        checks(self, schemas)
    }
}

async fn checks(config: &ApiSinkConfig, schemas: Option<&SchemaStore>) -> Vec<Check> {
    let sink = &config.sink;
    let (mapping, dataset) = mapping_check("sink.dataset_mapping", &sink.dataset_mapping, schemas);
    let mut checks = vec![mapping];
    checks.push(match &dataset {
        None => Check::failed("request profile", "not checked: the mapping did not load"),
        Some(dataset) => Check::from_result(
            "request profile",
            RequestBuilder::new(sink, &config.pipeline.name, dataset)
                .map(|_| format!("{} builds requests", sink.profile.as_str())),
        ),
    });
    let client = match reqwest::Client::builder()
        .timeout(sink.request_timeout())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            checks.push(Check::failed("api", format!("http client: {error}")));
            return checks;
        }
    };
    // Without usable credentials the API is still asked whether it answers at all.
    let auth = Authenticator::new(&sink.auth, sink.request_timeout());
    let fetched = match &auth {
        Ok(auth) => auth.header(&client).await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    let header = match fetched {
        Ok(header) => {
            checks.push(Check::ok(
                "auth",
                match (&header, &sink.auth) {
                    (None, _) => "none configured".to_string(),
                    (Some(_), crate::config::AuthConfig::Oauth2ClientCredentials { .. }) => {
                        "OAuth2 token fetched".to_string()
                    }
                    (Some(_), _) => "credentials resolved".to_string(),
                },
            ));
            header
        }
        Err(error) => {
            checks.push(Check::failed("auth", error));
            None
        }
    };
    let mut request = client.get(&sink.api_url);
    if let Some(header) = header {
        request = request.header(reqwest::header::AUTHORIZATION, header);
    }
    let started = Instant::now();
    checks.push(match request.send().await {
        Ok(response) if matches!(response.status().as_u16(), 401 | 403) => Check::failed(
            "api",
            format!(
                "{} refuses the credentials (HTTP {}): check [sink.auth]",
                sink.api_url,
                response.status().as_u16()
            ),
        ),
        Ok(response) => Check::ok(
            "api",
            format!(
                "{} answered HTTP {} in {} ms",
                sink.api_url,
                response.status().as_u16(),
                started.elapsed().as_millis()
            ),
        ),
        Err(error) => Check::failed(
            "api",
            format!(
                "no answer from sink.api_url = {:?} within {} ms: {}",
                sink.api_url,
                sink.request_timeout().as_millis(),
                error_chain(&error)
            ),
        ),
    });
    checks
}

/// The error and its causes, one line (reqwest's own message hides the cause).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
