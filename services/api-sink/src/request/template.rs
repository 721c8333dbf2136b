//! The `template` profile: a MiniJinja template file renders, per change, a JSON object
//! describing the request:
//!
//! ```text
//! {# Upsert by key; DELETE removes. #}
//! {
//!   "method": "{% if op == 'DELETE' %}DELETE{% else %}PUT{% endif %}",
//!   "url": "/cases/{{ key | urlencode }}",
//!   "headers": {"X-Pipeline": {{ pipeline | tojson }}},
//!   "body": {% if record %}{"dob": {{ record.patient_dob | tojson }}}{% else %}null{% endif %}
//! }
//! ```
//!
//! - `method` (required): an HTTP method; `url` (required): absolute, or a path starting with
//!   `/` appended to `api_url`; `headers` (optional): name → string; `body` (optional): any
//!   JSON, sent as `application/json` unless the template sets `Content-Type`; `null` or
//!   absent for no body. `Authorization` and `Idempotency-Key` are api-sink's and cannot be set.
//! - Context: the envelope fields (`op`, `key`, `version`, `content_hash`, `previous_hash`,
//!   `detected_at`, `record_schema`, `source`, `record` — see [`super`]) plus `pipeline`,
//!   `idempotency_key` and `api_url`. Nothing is escaped automatically: write JSON values
//!   with `| tojson` and URL parts with `| urlencode`.
//! - Undefined names are errors (strict mode, and a `tojson` that refuses undefined), so a
//!   misspelt field fails at start: the template
//!   is rendered for a sample UPDATE (every dataset field set) and a sample DELETE (`record` is
//!   `none`) before the service starts, and an error names the file and line.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use minijinja::value::Kwargs;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::Value;
use snapfeed_runtime::dataset::{Dataset, FieldKind, FieldValue};
use snapfeed_runtime::records::{ChangeEvent, ChangeOp, Provenance};

use super::{
    envelope, insert_idempotency_key, BuildError, DecodedChange, PreparedRequest, SetupError,
};

/// Headers api-sink sets itself.
const RESERVED_HEADERS: &[&str] = &["authorization", "idempotency-key", "content-length", "host"];

/// A loaded, test-rendered template.
pub(super) struct TemplateProfile {
    /// The file, as named in errors and used as the template's name.
    file: String,
    env: Environment<'static>,
    api_base: String,
    pipeline: String,
}

impl std::fmt::Debug for TemplateProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateProfile")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The rendered request, before checking.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderedRequest {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
}

/// A render that went wrong. `safe` texts may go into a dead letter or log (no values);
/// `full` ones only into a start-up error about a sample change.
enum RenderFailure {
    /// The envelope could not be built (a value JSON cannot hold).
    Envelope(BuildError),
    /// The template engine failed at `line`.
    Engine {
        line: usize,
        safe: String,
        full: String,
    },
    /// The output is not a valid request.
    Output { safe: String, full: String },
}

impl TemplateProfile {
    pub(super) fn load(
        path: &Path,
        api_base: &str,
        pipeline: &str,
        dataset: &Dataset,
    ) -> Result<Self, SetupError> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|source| SetupError::TemplateRead {
            path: file.clone(),
            source,
        })?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.add_filter("tojson", strict_tojson);
        env.add_template_owned(file.clone(), source)
            .map_err(|error| SetupError::Template {
                path: file.clone(),
                line: error.line().unwrap_or(0),
                message: describe(&error),
            })?;
        let profile = TemplateProfile {
            file,
            env,
            api_base: api_base.to_owned(),
            pipeline: pipeline.to_owned(),
        };
        profile.render_samples(dataset)?;
        Ok(profile)
    }

    /// Renders a sample UPDATE and a sample DELETE, so a template that cannot work fails now.
    fn render_samples(&self, dataset: &Dataset) -> Result<(), SetupError> {
        let record = sample_record(dataset).map_err(|message| SetupError::Template {
            path: self.file.clone(),
            line: 0,
            message,
        })?;
        let update = sample_event(ChangeOp::Update, dataset.schema_name());
        let delete = sample_event(ChangeOp::Delete, dataset.schema_name());
        for (change, sample) in [
            (
                DecodedChange {
                    event: &update,
                    record: Some(&record),
                },
                "UPDATE",
            ),
            (
                DecodedChange {
                    event: &delete,
                    record: None,
                },
                "DELETE",
            ),
        ] {
            self.render_inner(change, "0".repeat(64))
                .map_err(|failure| {
                    let (line, full) = match failure {
                        RenderFailure::Envelope(error) => (0, error.to_string()),
                        RenderFailure::Engine { line, full, .. } => (line, full),
                        RenderFailure::Output { full, .. } => (0, full),
                    };
                    SetupError::Template {
                        path: self.file.clone(),
                        line,
                        message: format!("rendering a sample {sample} change: {full}"),
                    }
                })?;
        }
        Ok(())
    }

    /// The request for one change.
    pub(super) fn render(
        &self,
        change: DecodedChange<'_>,
        idempotency_key: String,
    ) -> Result<PreparedRequest, BuildError> {
        self.render_inner(change, idempotency_key)
            .map_err(|failure| match failure {
                RenderFailure::Envelope(error) => error,
                RenderFailure::Engine { line, safe, .. } => BuildError::Template {
                    file: self.file.clone(),
                    line,
                    kind: safe,
                },
                RenderFailure::Output { safe, .. } => BuildError::TemplateOutput {
                    file: self.file.clone(),
                    problem: safe,
                },
            })
    }

    fn render_inner(
        &self,
        change: DecodedChange<'_>,
        idempotency_key: String,
    ) -> Result<PreparedRequest, RenderFailure> {
        let output = |safe: String, full: String| RenderFailure::Output { safe, full };
        let same = |text: String| RenderFailure::Output {
            safe: text.clone(),
            full: text,
        };
        let mut context = envelope(change).map_err(RenderFailure::Envelope)?;
        context.insert("pipeline".into(), self.pipeline.clone().into());
        context.insert("idempotency_key".into(), idempotency_key.clone().into());
        context.insert("api_url".into(), self.api_base.clone().into());
        let rendered = self
            .env
            .get_template(&self.file)
            .and_then(|template| {
                template.render(minijinja::Value::from(minijinja::value::Serde(&context)))
            })
            .map_err(|error| RenderFailure::Engine {
                line: error.line().unwrap_or(0),
                // The kind only: details can quote values ("cannot compare 'x' with 5").
                safe: error.kind().to_string(),
                full: describe(&error),
            })?;
        let request: RenderedRequest = serde_json::from_str(&rendered).map_err(|error| {
            output(
                format!(
                    "not a request object ({:?} error at output line {} column {})",
                    error.classify(),
                    error.line(),
                    error.column()
                ),
                format!("not a request object: {error}"),
            )
        })?;
        let method = Method::from_bytes(request.method.trim().as_bytes())
            .map_err(|_| same("method is not an HTTP method".into()))?;
        let url = if request.url.starts_with('/') {
            format!("{}{}", self.api_base, request.url)
        } else {
            request.url
        };
        let url = Url::parse(&url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| same("url is not an http(s) URL or a path starting with `/`".into()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| same("a header name is not valid".into()))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(same(format!(
                    "header {name} is set by api-sink, not the template"
                )));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| same(format!("header {name} has a value HTTP cannot carry")))?;
            headers.append(name, value);
        }
        let body = match request.body {
            None | Some(Value::Null) => Bytes::new(),
            Some(body) => Bytes::from(
                serde_json::to_vec(&body).map_err(|_| same("body cannot be serialized".into()))?,
            ),
        };
        if !body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        insert_idempotency_key(&mut headers, &idempotency_key);
        Ok(PreparedRequest {
            method,
            url,
            headers,
            body,
            idempotency_key,
        })
    }
}

/// `tojson` that refuses undefined: strict mode alone lets a filter turn a misspelt field (or
/// a field of a DELETE's absent record) into `null`, which would send wrong data quietly.
fn strict_tojson(
    value: &minijinja::Value,
    indent: Option<minijinja::Value>,
    kwargs: Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            ErrorKind::UndefinedError,
            "tojson of an undefined value (a misspelt name, or a record field of a DELETE)",
        ));
    }
    minijinja::filters::tojson(value, indent, kwargs)
}

fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// A change of `op` for the start-up test render.
fn sample_event(op: ChangeOp, schema: &str) -> ChangeEvent {
    ChangeEvent {
        op,
        key: "SAMPLE|KEY|1".into(),
        version: 2,
        content_hash: "0".repeat(64),
        previous_hash: Some("1".repeat(64)),
        record_schema: schema.into(),
        source: Provenance {
            file_name: "sample.csv".into(),
            file_hash: "2".repeat(64),
            line: (op != ChangeOp::Delete).then_some(2),
            snapshot_id: "2".repeat(64),
            stream: "sample".into(),
        },
        detected_at: 1_700_000_000_000,
    }
}

/// A record with every field set to a value of its kind.
fn sample_record(dataset: &Dataset) -> Result<snapfeed_runtime::dataset::DatasetRecord, String> {
    let values = dataset
        .fields()
        .iter()
        .map(|field| match field.kind() {
            FieldKind::String => FieldValue::String("sample".into()),
            FieldKind::Int => FieldValue::Int(1),
            FieldKind::Long => FieldValue::Long(1),
            FieldKind::Double => FieldValue::Double(1.5),
            FieldKind::Boolean => FieldValue::Boolean(true),
            FieldKind::Date => FieldValue::Date(19_000),
            FieldKind::TimestampMillis => FieldValue::TimestampMillis(1_700_000_000_000),
            FieldKind::Enum => field
                .symbols()
                .first()
                .map_or(FieldValue::Null, |symbol| FieldValue::Enum(symbol.clone())),
        })
        .collect();
    dataset
        .record(values)
        .map_err(|error| format!("cannot build a sample record: {error}"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::tests::{
        change, decoded, lab_dataset, sample_record as lab_record, sink_config,
    };
    use super::super::RequestBuilder;
    use super::*;

    const TEMPLATE: &str = r#"{# Upsert by key; DELETE removes. #}
{
  "method": "{% if op == 'DELETE' %}DELETE{% else %}PUT{% endif %}",
  "url": "/cases/{{ key | urlencode }}?v={{ version }}",
  "headers": {"X-Pipeline": {{ pipeline | tojson }}, "X-Stream": {{ source.stream | tojson }}},
  "body": {% if record %}{"dob": {{ record.patient_dob | tojson }}, "sex": {{ record.patient_sex | tojson }}, "first": {{ record.patient_first_name | tojson }}}{% else %}null{% endif %}
}
"#;

    fn template_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".json.j2")
            .tempfile()
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn builder(text: &str) -> (tempfile::NamedTempFile, Result<RequestBuilder, SetupError>) {
        let file = template_file(text);
        let profile = format!(
            "profile = \"template\"\n[sink.template]\ntemplate_file = {:?}\n",
            file.path().display().to_string()
        );
        let dataset = lab_dataset();
        let builder = RequestBuilder::new(&sink_config(&profile), "lab-results", &dataset);
        (file, builder)
    }

    #[test]
    fn a_template_renders_method_url_headers_and_body() {
        let (_file, builder) = builder(TEMPLATE);
        let builder = builder.unwrap();
        let dataset = lab_dataset();
        let record = lab_record(&dataset);
        let event = change(ChangeOp::Update, "05D|ACC 7|94500-6", 3);
        let request = builder.build(decoded(&event, Some(&record))).unwrap();
        assert_eq!(request.method, Method::PUT);
        assert_eq!(
            request.url.as_str(),
            "https://cc.example.org/cases/05D%7CACC%207%7C94500-6?v=3"
        );
        assert_eq!(request.headers["x-pipeline"], "lab-results");
        assert_eq!(request.headers["x-stream"], "lab-7");
        assert_eq!(request.headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            request.headers["idempotency-key"],
            request.idempotency_key.as_str()
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"dob": "1960-01-04", "sex": "M", "first": null})
        );

        let gone = change(ChangeOp::Delete, "K", 4);
        let delete = builder.build(decoded(&gone, None)).unwrap();
        assert_eq!(delete.method, Method::DELETE);
        assert!(delete.body.is_empty());
        assert!(!delete.headers.contains_key(CONTENT_TYPE));
    }

    #[test]
    fn a_misspelt_field_fails_at_start_naming_file_and_line() {
        let (file, builder) =
            builder(&TEMPLATE.replace("record.patient_dob", "record.patient_dbo"));
        let error = builder.unwrap_err().to_string();
        let path = file.path().display().to_string();
        assert!(
            error.starts_with(&format!("template file {path}, line 6:")),
            "{error}"
        );
        assert!(error.contains("UPDATE"), "{error}");
    }

    #[test]
    fn a_syntax_error_fails_at_start_naming_file_and_line() {
        let (file, builder) = builder("{\n  \"method\": \"POST\",\n  {% if %}\n}");
        let error = builder.unwrap_err().to_string();
        let path = file.path().display().to_string();
        assert!(
            error.starts_with(&format!("template file {path}, line 3:")),
            "{error}"
        );
    }

    #[test]
    fn a_template_that_forgets_delete_or_renders_no_request_fails_at_start() {
        let (_file, builder) = builder(&TEMPLATE.replace("{% if record %}", "{% if true %}"));
        let error = builder.unwrap_err().to_string();
        assert!(error.contains("DELETE"), "{error}");
        let (_file, builder) = builder_of("{\"method\": \"POST\"}");
        assert!(builder.unwrap_err().to_string().contains("url"));
        let (_file, builder) = builder_of(
            "{\"method\": \"POST\", \"url\": \"/x\", \"headers\": {\"Authorization\": \"x\"}}",
        );
        assert!(builder.unwrap_err().to_string().contains("authorization"));
        let (_file, builder) = builder_of("not json");
        assert!(builder
            .unwrap_err()
            .to_string()
            .contains("not a request object"));
    }

    fn builder_of(text: &str) -> (tempfile::NamedTempFile, Result<RequestBuilder, SetupError>) {
        builder(text)
    }

    #[test]
    fn a_render_failure_on_one_record_names_the_line_not_the_values() {
        // Valid for the sample (every field set), failing on a record without a first name.
        let (_file, builder) = builder(&TEMPLATE.replace(
            "\"body\": {% if record %}",
            "\"body\": {% if record and record.patient_first_name is none %}{{ no_such_name }}{% endif %}{% if record %}",
        ));
        let builder = builder.unwrap();
        let dataset = lab_dataset();
        let record = lab_record(&dataset);
        let event = change(ChangeOp::Create, "SECRET-KEY-VALUE", 1);
        let error = builder.build(decoded(&event, Some(&record))).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, BuildError::Template { line: 6, .. }),
            "{text}"
        );
        assert!(text.contains("line 6"), "{text}");
        assert!(
            !text.contains("Núñez") && !text.contains("SECRET-KEY-VALUE"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_template_file_is_named() {
        let dataset = lab_dataset();
        let config = sink_config(
            "profile = \"template\"\n[sink.template]\ntemplate_file = \"/nonexistent/t.json.j2\"\n",
        );
        let error = RequestBuilder::new(&config, "p", &dataset)
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/t.json.j2"), "{error}");
    }
}
