//! From a change to an HTTP request: [`RequestBuilder`] turns decoded changes into
//! [`PreparedRequest`]s by the configured profile — `json` (the change envelope, POSTed),
//! `commcare_case_v2` (CommCare bulk case upsert, see [`commcare`]) or `template` (a MiniJinja
//! template, see [`template`]). Pure: no I/O after start, so a request can be rebuilt or
//! resent any number of times with the same bytes.
//!
//! - `batch`: how a run of changes is grouped into requests (CommCare bulk).
//! - [`idempotency`]: the `Idempotency-Key` every request carries, so a re-sent change can be
//!   de-duplicated by the API.
//! - [`commcare`], [`template`], `envelope`: the profiles' bodies.
//! - [`confirm`]: the lookup confirming an ambiguous send before sending again (CommCare).
//!
//! **The envelope** (the `json` body and the `template` context): `op`, `key`, `version`,
//! `content_hash`, `previous_hash`, `detected_at` (RFC 3339, UTC, milliseconds),
//! `record_schema`, `source` (`file_name`, `file_hash`, `line`, `snapshot_id`, `stream`) and
//! `record`: the dataset record as a JSON object, field → value, with dates as `YYYY-MM-DD`,
//! timestamps as RFC 3339, enums as their symbol and nulls as `null`; `null` for DELETE.
//!
//! A change that cannot be rendered (a value JSON cannot hold, a template failing on this
//! record) is a [`BuildError`]: the caller dead-letters it as [`REASON_REQUEST_BUILD_FAILED`].
//! Error texts name fields, template lines and problems, never record values.

mod batch;
pub mod commcare;
pub mod confirm;
mod envelope;
pub mod idempotency;
pub mod template;

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use snapfeed_runtime::config::ConfigError;
use snapfeed_runtime::dataset::{Dataset, DatasetRecord};
use snapfeed_runtime::records::ChangeEvent;

use crate::config::{Profile, SinkConfig};
use commcare::CommCareProfile;
pub use envelope::{envelope, envelope_json, record_json, value_text};
pub use idempotency::{batch_idempotency_key, idempotency_key};
use template::TemplateProfile;

/// Dead-letter reason for a change no request could be built from.
pub const REASON_REQUEST_BUILD_FAILED: &str = "request_build_failed";

/// The request header carrying the idempotency key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A change with its dataset record decoded (`None` for DELETE).
#[derive(Debug, Clone, Copy)]
pub struct DecodedChange<'a> {
    /// The change as consumed from `changes`.
    pub event: &'a ChangeEvent,
    /// The event's record, decoded into the current dataset layout.
    pub record: Option<&'a DatasetRecord>,
}

/// A request ready to send (and to send again, byte for byte, on retry).
#[derive(Clone)]
pub struct PreparedRequest {
    /// HTTP method.
    pub method: Method,
    /// Full URL.
    pub url: Url,
    /// Every header but `Authorization` (added per attempt, see [`PreparedRequest::to_reqwest`]),
    /// including `Idempotency-Key` and `Content-Type`.
    pub headers: HeaderMap,
    /// The body (empty for none).
    pub body: Bytes,
    /// The `Idempotency-Key` sent, for the delivery receipt.
    pub idempotency_key: String,
}

impl fmt::Debug for PreparedRequest {
    /// Shape only: the body, the URL path and template headers may hold record values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedRequest")
            .field("method", &self.method.as_str())
            .field("origin", &self.url.origin().ascii_serialization())
            .field(
                "headers",
                &self
                    .headers
                    .keys()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.len())
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

impl PreparedRequest {
    /// The request for one attempt, with this attempt's `Authorization` (if any) and timeout.
    pub fn to_reqwest(
        &self,
        client: &reqwest::Client,
        authorization: Option<HeaderValue>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let mut headers = self.headers.clone();
        if let Some(authorization) = authorization {
            headers.insert(AUTHORIZATION, authorization);
        }
        client
            .request(self.method.clone(), self.url.clone())
            .headers(headers)
            .body(self.body.clone())
            .timeout(timeout)
    }
}

/// One request of [`RequestBuilder::build_batch`] and the changes it carries.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    /// The request.
    pub request: PreparedRequest,
    /// Which changes of the input slice it carries (contiguous, in order).
    pub members: Range<usize>,
    /// Each member's own Idempotency-Key, in member order (for receipts).
    pub member_keys: Vec<String>,
}

/// Why a change could not become a request. Never holds a record value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A CREATE or UPDATE came without its record.
    #[error("{op} change has no record")]
    MissingRecord {
        /// The operation.
        op: &'static str,
    },
    /// A value has no representation in the request.
    #[error("field {field}: {problem}")]
    Field {
        /// The field (or envelope key).
        field: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The template failed on this change.
    #[error("template {file}, line {line}: {kind}")]
    Template {
        /// The template file.
        file: String,
        /// Line in the file (0 if unknown).
        line: usize,
        /// The kind of failure (MiniJinja's error kind, without its details).
        kind: String,
    },
    /// The template rendered something that is not a request.
    #[error("template {file} rendered an invalid request: {problem}")]
    TemplateOutput {
        /// The template file.
        file: String,
        /// What is wrong, e.g. the JSON syntax error's position.
        problem: String,
    },
}

/// A [`BuildError`] for one change of a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change {index} of the batch: {source}")]
pub struct BatchBuildError {
    /// Position of the change in the slice given to [`RequestBuilder::build_batch`].
    pub index: usize,
    /// Why it failed.
    pub source: BuildError,
}

/// Why the request builder cannot start: configuration that does not fit the dataset, or a
/// template that does not load or render.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A key names something the dataset lacks, or a URL that does not parse.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The template file could not be read.
    #[error("cannot read template file {path}: {source}")]
    TemplateRead {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The template does not compile or does not render a valid request for a sample change.
    #[error("template file {path}, line {line}: {message}")]
    Template {
        /// The file.
        path: String,
        /// Line in the file (0 when the problem is in the rendered output as a whole).
        line: usize,
        /// What is wrong; names the sample (`UPDATE` or `DELETE`) when rendering one failed.
        message: String,
    },
}

/// Builds requests from changes by the configured profile; built once at start, shared.
#[derive(Debug)]
pub struct RequestBuilder {
    /// Pipeline name, part of every Idempotency-Key.
    pipeline: String,
    profile: ProfileBuilder,
}

#[derive(Debug)]
enum ProfileBuilder {
    Json { url: Url },
    CommCare(CommCareProfile),
    Template(TemplateProfile),
}

impl RequestBuilder {
    /// Prepares the configured profile: checks that named dataset fields exist, and loads and
    /// test-renders a template (errors name the file and line).
    pub fn new(sink: &SinkConfig, pipeline: &str, dataset: &Dataset) -> Result<Self, SetupError> {
        let profile = match sink.profile {
            Profile::Json => {
                let path = sink.json.as_ref().map_or("/", |json| json.path.as_str());
                let url = parse_url("sink.json.path", &format!("{}{path}", sink.api_base()))?;
                ProfileBuilder::Json { url }
            }
            Profile::CommcareCaseV2 => {
                let settings = sink.commcare_case_v2.as_ref().ok_or_else(|| {
                    ConfigError::invalid(
                        "sink.commcare_case_v2",
                        "(missing)",
                        "the profile's section",
                    )
                })?;
                ProfileBuilder::CommCare(CommCareProfile::new(sink, settings, dataset)?)
            }
            Profile::Template => {
                let settings = sink.template.as_ref().ok_or_else(|| {
                    ConfigError::invalid("sink.template", "(missing)", "the profile's section")
                })?;
                ProfileBuilder::Template(TemplateProfile::load(
                    &settings.template_file,
                    sink.api_base(),
                    pipeline,
                    dataset,
                )?)
            }
        };
        Ok(RequestBuilder {
            pipeline: pipeline.to_owned(),
            profile,
        })
    }

    /// The most changes one request carries (1 unless the profile batches).
    pub fn batch_max(&self) -> usize {
        match &self.profile {
            ProfileBuilder::CommCare(commcare) => commcare.batch_max(),
            _ => 1,
        }
    }

    /// The request for one change.
    pub fn build(&self, change: DecodedChange<'_>) -> Result<PreparedRequest, BuildError> {
        let key = idempotency_key(&self.pipeline, &change.event.key, change.event.version);
        match &self.profile {
            ProfileBuilder::Json { url } => {
                let body = envelope_json(change)?;
                Ok(json_request(Method::POST, url.clone(), body, key))
            }
            ProfileBuilder::CommCare(commcare) => {
                let case = commcare.case(change)?;
                let body = serde_json::to_vec(&[case])
                    .map_err(|_| field_error("record", "cannot be serialized as JSON"))?;
                Ok(json_request(
                    Method::POST,
                    commcare.url().clone(),
                    body,
                    key,
                ))
            }
            ProfileBuilder::Template(template) => template.render(change, key),
        }
    }
}

fn json_request(
    method: Method,
    url: Url,
    body: Vec<u8>,
    idempotency_key: String,
) -> PreparedRequest {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    insert_idempotency_key(&mut headers, &idempotency_key);
    PreparedRequest {
        method,
        url,
        headers,
        body: Bytes::from(body),
        idempotency_key,
    }
}

fn insert_idempotency_key(headers: &mut HeaderMap, key: &str) {
    // Hex digits only: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(key) {
        headers.insert(IDEMPOTENCY_KEY, value);
    }
}

fn parse_url(key: &str, url: &str) -> Result<Url, ConfigError> {
    Url::parse(url)
        .map_err(|error| ConfigError::invalid(key, format!("{url:?}"), format!("a URL ({error})")))
}

fn field_error(field: &str, problem: &'static str) -> BuildError {
    BuildError::Field {
        field: field.to_owned(),
        problem,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use snapfeed_runtime::avro::SchemaStore;
    use snapfeed_runtime::dataset::{DatasetMapping, FieldValue};
    use snapfeed_runtime::records::{ChangeOp, Provenance};

    use serde_json::Value;

    use super::*;

    fn repo() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
    }

    /// The real lab-results dataset (schema + mapping from the repository).
    pub(crate) fn lab_dataset() -> Dataset {
        let store = SchemaStore::load_dir(&repo().join("schemas")).unwrap();
        DatasetMapping::load(
            &repo().join("deploy/config/lab_results.mapping.toml"),
            &store,
        )
        .unwrap()
    }

    /// A lab result with a null first name, a date, an enum and a timestamp.
    pub(crate) fn sample_record(dataset: &Dataset) -> DatasetRecord {
        let values = dataset
            .fields()
            .iter()
            .map(|field| match field.name() {
                "patient_last_name" => FieldValue::String("Núñez".into()),
                "patient_first_name" | "date_reported" => FieldValue::Null,
                "patient_dob" => FieldValue::Date(-3650),
                "patient_sex" => FieldValue::Enum("M".into()),
                "specimen_collection_date" | "result_date" => FieldValue::Date(18_700),
                "test_result" => FieldValue::String("Detected".into()),
                "report_generated_at" => FieldValue::TimestampMillis(1_620_000_000_123),
                other => FieldValue::String(format!("{other} value")),
            })
            .collect();
        dataset.record(values).unwrap()
    }

    /// A change of `key` at `version` (its record travels separately, decoded).
    pub(crate) fn change(op: ChangeOp, key: &str, version: i64) -> ChangeEvent {
        ChangeEvent {
            op,
            key: key.into(),
            version,
            content_hash: "ab".repeat(32),
            previous_hash: (version > 1).then(|| "cd".repeat(32)),
            record_schema: "snapfeed.lab.LabResult".into(),
            source: Provenance {
                file_name: "lab7-2021-05-03.csv".into(),
                file_hash: "ef".repeat(32),
                line: (op != ChangeOp::Delete).then_some(12),
                snapshot_id: "ef".repeat(32),
                stream: "lab-7".into(),
            },
            detected_at: 1_620_000_000_456,
        }
    }

    pub(crate) fn decoded<'a>(
        event: &'a ChangeEvent,
        record: Option<&'a DatasetRecord>,
    ) -> DecodedChange<'a> {
        DecodedChange { event, record }
    }

    /// A `[sink]` section with `profile` (TOML: the `profile` key and the profile's section).
    pub(crate) fn sink_config(profile: &str) -> SinkConfig {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"k:9092\"\n[sink]\n\
             api_url = \"https://cc.example.org/\"\ndataset_mapping = \"m.toml\"\n{profile}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        snapfeed_runtime::config::load::<crate::config::ApiSinkConfig>(
            Some(file.path()),
            Vec::new(),
        )
        .unwrap()
        .sink
    }

    const JSON: &str = "profile = \"json\"\n[sink.json]\npath = \"/snapfeed/changes\"\n";

    #[test]
    fn the_json_profile_posts_the_envelope() {
        let dataset = lab_dataset();
        let builder = RequestBuilder::new(&sink_config(JSON), "lab-results", &dataset).unwrap();
        assert_eq!(builder.batch_max(), 1);
        let record = sample_record(&dataset);
        let event = change(ChangeOp::Update, "05D|ACC|94500-6", 2);
        let request = builder.build(decoded(&event, Some(&record))).unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(
            request.url.as_str(),
            "https://cc.example.org/snapfeed/changes"
        );
        assert_eq!(request.headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            request.idempotency_key,
            idempotency_key("lab-results", "05D|ACC|94500-6", 2)
        );
        assert_eq!(
            request.headers[IDEMPOTENCY_KEY],
            request.idempotency_key.as_str()
        );
        assert!(!request.headers.contains_key(AUTHORIZATION));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["op"], "UPDATE");
        assert_eq!(body["key"], "05D|ACC|94500-6");
        assert_eq!(body["version"], 2);
        assert_eq!(body["content_hash"], "ab".repeat(32));
        assert_eq!(body["previous_hash"], "cd".repeat(32));
        assert_eq!(body["detected_at"], "2021-05-03T00:00:00.456Z");
        assert_eq!(body["record_schema"], "snapfeed.lab.LabResult");
        assert_eq!(
            body["source"],
            serde_json::json!({
                "file_name": "lab7-2021-05-03.csv", "file_hash": "ef".repeat(32), "line": 12,
                "snapshot_id": "ef".repeat(32), "stream": "lab-7",
            })
        );
        let fields = &body["record"];
        assert_eq!(fields.as_object().unwrap().len(), dataset.fields().len());
        assert_eq!(fields["patient_dob"], "1960-01-04");
        assert_eq!(fields["patient_sex"], "M");
        assert_eq!(fields["patient_first_name"], Value::Null);
        assert_eq!(fields["patient_last_name"], "Núñez");
        assert_eq!(fields["report_generated_at"], "2021-05-03T00:00:00.123Z");
    }

    #[test]
    fn a_delete_has_a_null_record_and_an_update_needs_one() {
        let dataset = lab_dataset();
        let builder = RequestBuilder::new(&sink_config(JSON), "p", &dataset).unwrap();
        let gone = change(ChangeOp::Delete, "K", 5);
        let body: Value =
            serde_json::from_slice(&builder.build(decoded(&gone, None)).unwrap().body).unwrap();
        assert_eq!(
            (body["op"].as_str(), &body["record"]),
            (Some("DELETE"), &Value::Null)
        );
        assert_eq!(body["source"]["line"], Value::Null);
        let update = change(ChangeOp::Update, "K", 6);
        assert_eq!(
            builder.build(decoded(&update, None)).unwrap_err(),
            BuildError::MissingRecord { op: "UPDATE" }
        );
    }

    #[test]
    fn debug_output_shows_the_shape_not_the_contents() {
        let dataset = lab_dataset();
        let builder = RequestBuilder::new(&sink_config(JSON), "p", &dataset).unwrap();
        let record = sample_record(&dataset);
        let event = change(ChangeOp::Create, "K", 1);
        let request = builder.build(decoded(&event, Some(&record))).unwrap();
        let debug = format!("{request:?}");
        assert!(
            !debug.contains("Núñez") && !debug.contains("snapfeed/changes"),
            "{debug}"
        );
        assert!(debug.contains("body_bytes"), "{debug}");
    }

    #[test]
    fn a_prepared_request_is_sent_with_the_attempt_authorization() {
        let dataset = lab_dataset();
        let builder = RequestBuilder::new(&sink_config(JSON), "p", &dataset).unwrap();
        let record = sample_record(&dataset);
        let event = change(ChangeOp::Create, "K", 1);
        let prepared = builder.build(decoded(&event, Some(&record))).unwrap();
        let client = reqwest::Client::new();
        let request = prepared
            .to_reqwest(
                &client,
                Some(HeaderValue::from_static("Bearer t")),
                Duration::from_secs(3),
            )
            .build()
            .unwrap();
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer t");
        assert_eq!(
            request.headers()[IDEMPOTENCY_KEY],
            prepared.idempotency_key.as_str()
        );
        assert_eq!(request.timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(
            request.body().and_then(|b| b.as_bytes()),
            Some(prepared.body.as_ref())
        );
    }
}
