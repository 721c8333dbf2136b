//! The Confluent Schema Registry, optional: `[schema_registry]` ([`SchemaRegistryConfig`]).
//!
//! When set, every service registers (or, with `auto_register = false`, looks up) at start the
//! current schema of every record kind the pipeline writes, under the subject of the topic it
//! goes to ([`subjects`]), and keeps the ids: with `value_framing = "registry"` (the default)
//! every value is then written as `00` + 4-byte big-endian id + Avro binary, which Kafka
//! Connect's `AvroConverter`, ksqlDB, Flink `avro-confluent` and Confluent's clients read.
//! `value_framing = "single_object"` keeps the registry for reading only (nothing is
//! registered and start-up does not wait for the registry): the way back from registry
//! framing while its records are still on the topics.
//!
//! Ids are immutable in a registry, so an id, once learnt, is cached for the life of the
//! process: there is no cache setting. A reader meeting an id it has not seen (a schema
//! version it did not register itself, or one registered by another writer) asks the registry
//! once (`GET /schemas/ids/{id}`) and maps the answer to a schema of `schemas/` by its
//! fingerprint: values are still only decoded with schemas this pipeline knows.
//!
//! Failures at start: a registry that cannot be reached, times out, or answers 5xx or 429 is
//! retried with capped backoff and the service stays not ready meanwhile; a subject that
//! refuses the schema as incompatible (409), refused credentials (401/403) or a schema missing
//! under `auto_register = false` stop the service with an error naming the subject and the
//! registry's reason. Mid-run (a reader looking an id up): every failure but the registry's
//! own "schema not found" is retried until it answers — a record that cannot be read yet
//! waits; it is never rejected or dead-lettered for the registry's sake (it commits nothing
//! meanwhile, and the drain bound still ends the process on shutdown). Failed answers ("not
//! found", "not in schemas/") are cached like ids: they do not change either.
//!
//! Why not `schema_registry_converter`: it brings its own Avro stack (`apache-avro` with
//! default features, plus `futures`, `dashmap` and a second TLS stack through its own
//! `reqwest` features) to do what is four REST calls here, and it encodes values itself,
//! where snapfeed writes the header in front of bytes it encodes (or splices) on its hot
//! paths. The client here is a thread of its own with a single-threaded runtime, so a lookup
//! can be made from stage threads and async workers alike without nesting runtimes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{secret_ref, ConfigError, Secret, SecretRef};
use crate::shutdown::Shutdown;
use crate::topics::TopicNames;

use super::{AvroError, LoadedSchema, RegistryId, SchemaStore};

/// The `[schema_registry]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `https://registry.example.org:8081` (https uses the system's roots,
    /// like the API client).
    pub url: String,
    /// How to authenticate: `type = "none" | "basic" | "bearer"`.
    #[serde(default)]
    pub auth: RegistryAuth,
    /// `topic_name` (default: `<topic>-value`) or `topic_record_name`
    /// (`<topic>-<record full name>`). Topics that carry several record kinds (`snapshots`,
    /// `state`) always use `<topic>-<record full name>`: one subject cannot hold unrelated
    /// record types.
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// Register schemas at start (true, default) or only look them up (false: a subject
    /// without the schema stops the service).
    #[serde(default = "default_true")]
    pub auto_register: bool,
    /// `registry` (default): write values in the Confluent wire format. `single_object`:
    /// write single-object values but still read registry-framed ones.
    #[serde(default)]
    pub value_framing: ValueFraming,
    /// Bound of one registry request.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

/// `schema_registry.auth`, selected by `type`. Secrets by reference only.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryAuth {
    /// No `Authorization` header.
    #[default]
    None,
    /// HTTP Basic (Confluent Cloud: API key and secret).
    Basic {
        /// User (or API key).
        user: String,
        /// Password (or API secret).
        #[serde(deserialize_with = "secret_ref")]
        password: SecretRef,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        #[serde(deserialize_with = "secret_ref")]
        token: SecretRef,
    },
}

/// How subjects are named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (Confluent's `TopicNameStrategy`).
    #[default]
    TopicName,
    /// `<topic>-<record full name>` (Confluent's `TopicRecordNameStrategy`).
    TopicRecordName,
}

/// How values are framed when a registry is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFraming {
    /// `00` + schema id + datum.
    #[default]
    Registry,
    /// `C3 01` + fingerprint + datum.
    SingleObject,
}

impl SchemaRegistryConfig {
    /// Checks the URL and the ranges; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let parsed = reqwest::Url::parse(&self.url).ok();
        if parsed
            .as_ref()
            .is_some_and(|u| !u.username().is_empty() || u.password().is_some())
        {
            // Not repeated: the URL holds a credential.
            return Err(ConfigError::invalid(
                "schema_registry.url",
                "(a URL with user:password@)",
                "a URL without credentials: give them in schema_registry.auth, by reference",
            ));
        }
        let url_ok =
            parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !url_ok {
            return Err(ConfigError::invalid(
                "schema_registry.url",
                format!("{:?}", self.url),
                "an http(s) URL with a host",
            ));
        }
        if !(100..=300_000).contains(&self.request_timeout_ms) {
            return Err(ConfigError::invalid(
                "schema_registry.request_timeout_ms",
                self.request_timeout_ms.to_string(),
                "100..=300000",
            ));
        }
        if let RegistryAuth::Basic { user, .. } = &self.auth {
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                return Err(ConfigError::invalid(
                    "schema_registry.auth.user",
                    format!("{user:?}"),
                    "a non-empty user without ':' or control characters",
                ));
            }
        }
        Ok(())
    }
}

/// Why a registry request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// No answer: connection refused or reset, timeout.
    #[error("schema registry {url} not reachable: {detail}")]
    Unreachable {
        /// The registry.
        url: String,
        /// What happened.
        detail: String,
    },
    /// An error status.
    #[error("schema registry answered {status} to {what}: {message}")]
    Status {
        /// What was asked.
        what: String,
        /// HTTP status.
        status: u16,
        /// The registry's `error_code`, when it gave one.
        code: Option<i64>,
        /// The registry's `message` (never contains record data: only schemas go there).
        message: String,
    },
    /// The answer was not what the REST API documents.
    #[error("schema registry answered {what} with an unexpected body: {detail}")]
    Protocol {
        /// What was asked.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The client's thread is gone (the process is stopping).
    #[error("schema registry client stopped")]
    Stopped,
}

impl RegistryError {
    /// Worth retrying: no answer, 5xx, 429 or 408.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            RegistryError::Protocol { .. } | RegistryError::Stopped => false,
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { status: 404, .. })
    }

    /// The registry's own "schema not found" (404 with error code 40403), not a 404 from a
    /// proxy in front of it.
    fn is_unknown_schema(&self) -> bool {
        matches!(
            self,
            RegistryError::Status {
                status: 404,
                code: Some(40403),
                ..
            }
        )
    }
}

/// A request to the registry.
#[derive(Debug)]
enum Call {
    Register { subject: String, schema: String },
    Lookup { subject: String, schema: String },
    Compatibility { subject: String, schema: String },
    SchemaById { id: u32 },
    Subjects,
}

/// An answer.
#[derive(Debug)]
enum Answer {
    Id(u32),
    Missing,
    Compatible(bool, Vec<String>),
    Schema(String),
    Count(usize),
}

type Job = (
    Call,
    std::sync::mpsc::SyncSender<Result<Answer, RegistryError>>,
);

/// A registry client on a thread of its own (see the module documentation).
#[derive(Debug)]
pub struct Registry {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    url: String,
    timeout: Duration,
    config: SchemaRegistryConfig,
    /// How long a lookup by id keeps retrying; `None`: until the registry answers.
    patience: Option<Duration>,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Registry {
    /// Resolves the secrets and starts the client's thread.
    pub fn start(config: &SchemaRegistryConfig) -> Result<Arc<Registry>, ConfigError> {
        let authorization = match &config.auth {
            RegistryAuth::None => None,
            RegistryAuth::Basic { user, password } => {
                let password = password.resolve("schema_registry.auth.password")?;
                Some(basic(user, &password))
            }
            RegistryAuth::Bearer { token } => {
                let token = token.resolve("schema_registry.auth.token")?;
                Some(format!("Bearer {}", token.expose()))
            }
        };
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|error| {
                ConfigError::invalid(
                    "schema_registry.url",
                    format!("{:?}", config.url),
                    format!("a URL an HTTP client can be built for ({error})"),
                )
            })?;
        let base = config.url.trim_end_matches('/').to_string();
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let worker = Worker {
            client,
            base: base.clone(),
            authorization,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| {
                ConfigError::invalid(
                    "schema_registry",
                    "(client)",
                    format!("a runtime for the registry client ({error})"),
                )
            })?;
        std::thread::Builder::new()
            .name("schema-registry".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let worker = Arc::new(worker);
                    while let Some((call, reply)) = queue.recv().await {
                        let worker = worker.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(worker.call(call).await);
                        });
                    }
                })
            })
            .map_err(|error| {
                ConfigError::invalid(
                    "schema_registry",
                    "(client)",
                    format!("a thread for the registry client ({error})"),
                )
            })?;
        Ok(Arc::new(Registry {
            jobs,
            url: base,
            timeout,
            config: config.clone(),
            patience: None,
        }))
    }

    /// A client whose lookups by id give up after `patience` (an operator command must end),
    /// sharing this one's thread.
    pub fn with_patience(&self, patience: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            jobs: self.jobs.clone(),
            url: self.url.clone(),
            timeout: self.timeout,
            config: self.config.clone(),
            patience: Some(patience),
        })
    }

    /// The section it was started from.
    pub fn config(&self) -> &SchemaRegistryConfig {
        &self.config
    }

    /// One request, waited for on this thread (bounded by the request timeout).
    fn call_blocking(&self, call: Call) -> Result<Answer, RegistryError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send((call, reply))
            .map_err(|_| RegistryError::Stopped)?;
        match answer.recv_timeout(self.timeout + Duration::from_secs(5)) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(RegistryError::Unreachable {
                url: self.url.clone(),
                detail: "no answer within the request timeout".into(),
            }),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(RegistryError::Stopped),
        }
    }

    /// One bounded request that needs the credentials (`GET /subjects`): how many subjects
    /// the registry holds. For `check-config --connect`; no retrying.
    pub async fn probe(self: &Arc<Self>) -> Result<usize, RegistryError> {
        let this = self.clone();
        let answer = tokio::task::spawn_blocking(move || this.call_blocking(Call::Subjects))
            .await
            .unwrap_or(Err(RegistryError::Stopped))?;
        match answer {
            Answer::Count(count) => Ok(count),
            _ => Err(RegistryError::Protocol {
                what: "GET /subjects".into(),
                detail: "not a list".into(),
            }),
        }
    }

    /// The schema text the registry holds under `id`; `None` when it does not know the id.
    ///
    /// Every other failure is retried with capped backoff until the registry answers (see
    /// the module documentation): the caller is a reader, and a record it cannot read yet
    /// must wait, not be rejected or dead-lettered as unreadable. That includes refusals a
    /// retry cannot cure by itself (401/403 after a credential rotation, a malformed answer):
    /// they are logged as errors, and the reader holds its partition until an operator fixes
    /// the registry or its credentials (restarting with new ones re-reads the secret). An
    /// operator command's client ([`Registry::with_patience`]) gives up after its patience.
    pub fn schema_by_id_blocking(&self, id: u32) -> Result<Option<String>, RegistryError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.call_blocking(Call::SchemaById { id }) {
                Ok(Answer::Schema(text)) => return Ok(Some(text)),
                Ok(_) => return Ok(None),
                Err(RegistryError::Stopped) => return Err(RegistryError::Stopped),
                Err(error) if self.patience.is_some_and(|p| started.elapsed() + delay > p) => {
                    return Err(error)
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(message = "Schema registry lookup failed; retrying.", id, %error, retry_in_ms = delay.as_millis() as u64);
                }
                Err(error) => {
                    tracing::error!(message = "Schema registry refuses a lookup; retrying until it answers.", id, %error, retry_in_ms = delay.as_millis() as u64);
                }
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// Registers (or looks up) `schema` under `subject`, retrying transient failures with
    /// capped backoff until `stop` says so or `give_up` passes; returns its id. Blocking.
    fn id_under(
        &self,
        subject: &str,
        schema: &LoadedSchema,
        stop: &dyn Fn() -> bool,
        give_up: Option<Instant>,
    ) -> Result<u32, RegistrationError> {
        let text = schema.json.to_string();
        let mut delay = Duration::from_millis(200);
        loop {
            let call = if self.config.auto_register {
                Call::Register {
                    subject: subject.to_string(),
                    schema: text.clone(),
                }
            } else {
                Call::Lookup {
                    subject: subject.to_string(),
                    schema: text.clone(),
                }
            };
            let error = match self.call_blocking(call) {
                Ok(Answer::Id(id)) => return Ok(id),
                Ok(_) => RegistryError::Protocol {
                    what: format!("subject {subject}"),
                    detail: "no id".into(),
                },
                Err(error) => error,
            };
            let out_of_time = give_up.is_some_and(|at| Instant::now() + delay > at);
            if !error.is_transient() || out_of_time {
                return Err(self.refused(subject, schema, &text, error));
            }
            tracing::warn!(message = "Schema registry not available yet; retrying.", subject, %error, retry_in_ms = delay.as_millis() as u64);
            let wake = Instant::now() + delay;
            while Instant::now() < wake {
                if stop() {
                    return Err(RegistrationError::Interrupted);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
    }

    /// The error for a schema the registry would not take or does not hold.
    fn refused(
        &self,
        subject: &str,
        schema: &LoadedSchema,
        text: &str,
        error: RegistryError,
    ) -> RegistrationError {
        let name = schema.name.clone();
        match &error {
            RegistryError::Status {
                status: 409,
                message,
                ..
            } => RegistrationError::Incompatible {
                subject: subject.to_string(),
                schema: name,
                reason: message.clone(),
            },
            RegistryError::Status { status: 404, .. } if !self.config.auto_register => {
                // Why it is missing: the compatibility check says whether it could be added.
                let reason = match self.call_blocking(Call::Compatibility {
                    subject: subject.to_string(),
                    schema: text.to_string(),
                }) {
                    Ok(Answer::Compatible(false, messages)) => format!(
                        "not registered, and incompatible with it: {}",
                        messages.join("; ")
                    ),
                    _ => "not registered under it, and schema_registry.auto_register = false"
                        .to_string(),
                };
                RegistrationError::NotRegistered {
                    subject: subject.to_string(),
                    schema: name,
                    reason,
                }
            }
            _ => RegistrationError::Registry {
                subject: subject.to_string(),
                source: error,
            },
        }
    }
}

/// Why start-up registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The subject's registered schemas do not accept this one.
    #[error("schema registry subject {subject} refuses {schema} as incompatible: {reason}")]
    Incompatible {
        /// Subject.
        subject: String,
        /// Full name of the schema.
        schema: String,
        /// The registry's reason.
        reason: String,
    },
    /// `auto_register = false` and the schema is not under the subject.
    #[error("schema registry subject {subject} does not hold {schema}: {reason}")]
    NotRegistered {
        /// Subject.
        subject: String,
        /// Full name of the schema.
        schema: String,
        /// Why.
        reason: String,
    },
    /// Any other refusal (credentials, invalid schema).
    #[error("schema registry subject {subject}: {source}")]
    Registry {
        /// Subject.
        subject: String,
        /// The error.
        source: RegistryError,
    },
    /// Shutdown came first.
    #[error("shutdown requested during schema registration")]
    Interrupted,
    /// The registration task panicked (a bug).
    #[error("schema registration panicked")]
    Panicked,
    /// A schema the pipeline writes is not in `schemas/`.
    #[error(transparent)]
    Schemas(#[from] AvroError),
}

/// The record kinds on each topic (full names; `dataset` for the dataset record).
fn kinds<'t>(topics: &'t TopicNames, dataset: &'t str) -> [(&'t str, Vec<&'t str>); 7] {
    use crate::records::{
        AvroRecord, ChangeEvent, DeadLetter, DeliveryReceipt, DetectorState, FileLedgerEntry,
        RejectedRow, SnapshotEnd, StaleSnapshot, StateLayout, StreamProgress,
    };
    [
        (&topics.snapshots, vec![dataset, SnapshotEnd::SCHEMA]),
        (&topics.files, vec![FileLedgerEntry::SCHEMA]),
        (&topics.rejects, vec![RejectedRow::SCHEMA]),
        (
            &topics.state,
            vec![
                DetectorState::SCHEMA,
                StreamProgress::SCHEMA,
                StaleSnapshot::SCHEMA,
                StateLayout::SCHEMA,
            ],
        ),
        (&topics.changes, vec![ChangeEvent::SCHEMA]),
        (&topics.deliveries, vec![DeliveryReceipt::SCHEMA]),
        (&topics.dead_letters, vec![DeadLetter::SCHEMA]),
    ]
}

/// A schema to register: topic, subject, schema.
pub type Subject = (String, String, Arc<LoadedSchema>);

/// Every (topic, subject, schema) the pipeline writes, for the pipeline's dataset — or, with
/// `only`, just those record kinds (which must not nest the dataset): the subjects registered.
pub fn subjects(
    store: &SchemaStore,
    topics: &TopicNames,
    dataset: &str,
    strategy: SubjectStrategy,
    only: Option<&[&str]>,
) -> Result<Vec<Subject>, AvroError> {
    let mut out = Vec::new();
    for (topic, names) in kinds(topics, dataset) {
        for name in &names {
            if only.is_some_and(|only| !only.contains(name)) {
                continue;
            }
            let subject = match strategy {
                SubjectStrategy::TopicName if names.len() == 1 => format!("{topic}-value"),
                _ => format!("{topic}-{name}"),
            };
            out.push((
                topic.to_string(),
                subject,
                store.current_for(name, dataset)?,
            ));
        }
    }
    Ok(out)
}

/// Registers (or looks up) each of `subjects` and gives its schema the id, framing values
/// with it when `value_framing = "registry"`. Blocking; see [`Registry::id_under`] for
/// `stop` and `give_up`.
fn register_all(
    registry: &Registry,
    store: &SchemaStore,
    subjects: Vec<Subject>,
    stop: &dyn Fn() -> bool,
    give_up: Option<Instant>,
) -> Result<(), RegistrationError> {
    let frames = registry.config.value_framing == ValueFraming::Registry;
    for (topic, subject, schema) in subjects {
        let id = registry.id_under(&subject, &schema, stop, give_up)?;
        if let Some(known) = schema.registry_id() {
            if known.id != id {
                tracing::info!(
                    message = "Schema has another id under this subject; values carry the first.",
                    subject,
                    first = known.id,
                    id
                );
            }
        }
        schema.set_registry_id(RegistryId { id, frames });
        store.remember_id(id, schema.fingerprint);
        tracing::info!(message = "Schema registered.", topic, subject, schema = %schema.name, id);
    }
    Ok(())
}

/// Registers (or looks up) every schema the pipeline writes ([`subjects`]) and gives each
/// its id (see the module documentation). Retries an unavailable registry until shutdown,
/// off the async workers.
pub async fn register_pipeline(
    registry: &Arc<Registry>,
    store: &Arc<SchemaStore>,
    topics: &TopicNames,
    dataset: &str,
    shutdown: &Shutdown,
) -> Result<(), RegistrationError> {
    if registry.config.value_framing == ValueFraming::SingleObject {
        return Ok(());
    }
    let subjects = subjects(
        store,
        topics,
        dataset,
        registry.config.subject_strategy,
        None,
    )?;
    let (registry, store, stop) = (registry.clone(), store.clone(), shutdown.clone());
    let task = tokio::task::spawn_blocking(move || {
        register_all(&registry, &store, subjects, &|| stop.is_triggered(), None)
    });
    let mut shutdown = shutdown.clone();
    tokio::select! {
        joined = task => joined.unwrap_or(Err(RegistrationError::Panicked)),
        // A request in flight ends on its own (bounded by the request timeout); the task
        // then sees the trigger and stops.
        _ = shutdown.wait() => Err(RegistrationError::Interrupted),
    }
}

/// For an operator command that writes records of `kinds` (none nesting the dataset): the
/// same registration as at start, for those kinds only, when `store` has a registry; an
/// unavailable registry is retried for up to a minute. Blocking.
pub fn register_kinds(
    store: &SchemaStore,
    topics: &TopicNames,
    kinds: &[&str],
) -> Result<(), RegistrationError> {
    let Some(registry) = store.registry() else {
        return Ok(());
    };
    if registry.config.value_framing == ValueFraming::SingleObject {
        return Ok(());
    }
    let subjects = subjects(
        store,
        topics,
        "",
        registry.config.subject_strategy,
        Some(kinds),
    )?;
    let give_up = Instant::now() + Duration::from_secs(60);
    register_all(registry, store, subjects, &|| false, Some(give_up))
}

fn basic(user: &str, password: &Secret) -> String {
    use std::io::Write;
    let mut raw = Vec::new();
    let _ = write!(raw, "{user}:{}", password.expose());
    format!("Basic {}", base64(&raw))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The HTTP side, on the client's thread.
struct Worker {
    client: reqwest::Client,
    base: String,
    authorization: Option<String>,
}

impl Worker {
    async fn call(&self, call: Call) -> Result<Answer, RegistryError> {
        match call {
            Call::Register { subject, schema } => {
                let path = format!("/subjects/{}/versions", encode_path(&subject));
                let body = self
                    .send(reqwest::Method::POST, &path, Some(&schema))
                    .await?;
                id_of(&body, &path).map(Answer::Id)
            }
            Call::Lookup { subject, schema } => {
                let path = format!("/subjects/{}", encode_path(&subject));
                let body = self
                    .send(reqwest::Method::POST, &path, Some(&schema))
                    .await?;
                id_of(&body, &path).map(Answer::Id)
            }
            Call::Compatibility { subject, schema } => {
                let path = format!(
                    "/compatibility/subjects/{}/versions/latest?verbose=true",
                    encode_path(&subject)
                );
                let body = match self.send(reqwest::Method::POST, &path, Some(&schema)).await {
                    Ok(body) => body,
                    // No subject yet: anything is compatible with nothing.
                    Err(error) if error.is_not_found() => {
                        return Ok(Answer::Compatible(true, vec![]))
                    }
                    Err(error) => return Err(error),
                };
                let compatible = body["is_compatible"].as_bool().unwrap_or(false);
                let messages = body["messages"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .map(|v| v.as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Answer::Compatible(compatible, messages))
            }
            Call::Subjects => {
                let body = self.send(reqwest::Method::GET, "/subjects", None).await?;
                match body.as_array() {
                    Some(subjects) => Ok(Answer::Count(subjects.len())),
                    None => Err(RegistryError::Protocol {
                        what: "GET /subjects".into(),
                        detail: "not a JSON array".into(),
                    }),
                }
            }
            Call::SchemaById { id } => {
                let path = format!("/schemas/ids/{id}");
                match self.send(reqwest::Method::GET, &path, None).await {
                    Ok(body) => match body["schema"].as_str() {
                        Some(text) => Ok(Answer::Schema(text.to_string())),
                        None => Err(RegistryError::Protocol {
                            what: path,
                            detail: "no \"schema\"".into(),
                        }),
                    },
                    Err(error) if error.is_unknown_schema() => Ok(Answer::Missing),
                    Err(error) => Err(error),
                }
            }
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        schema: Option<&str>,
    ) -> Result<serde_json::Value, RegistryError> {
        let what = format!("{method} {path}");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(schema) = schema {
            let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let unreachable = |error: reqwest::Error| RegistryError::Unreachable {
            url: self.base.clone(),
            detail: error.without_url().to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(unreachable)?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(RegistryError::Status {
            what,
            status,
            code: body["error_code"].as_i64(),
            message: body["message"].as_str().map_or_else(
                || format!("{} bytes without a message", bytes.len()),
                str::to_string,
            ),
        })
    }
}

fn id_of(body: &serde_json::Value, path: &str) -> Result<u32, RegistryError> {
    body["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| RegistryError::Protocol {
            what: path.to_string(),
            detail: "no numeric \"id\"".into(),
        })
}

/// Percent-encodes a subject for a URL path (topic names are `[a-zA-Z0-9._-]`, record names
/// add nothing else, but a subject is the registry's key: encode anything unusual).
fn encode_path(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for byte in subject.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_rfc_base64() {
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        schema_registry: SchemaRegistryConfig,
    }

    impl crate::config::ServiceConfig for Section {
        fn validate(&self) -> Result<(), ConfigError> {
            self.schema_registry.validate()
        }
    }

    /// `text` as a `[schema_registry]` section, loaded the way services load their config.
    fn parse(text: &str) -> Result<SchemaRegistryConfig, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("[schema_registry]\n{text}\n")).unwrap();
        crate::config::load::<Section>(Some(file.path()), Vec::new())
            .map(|section| section.schema_registry)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_defaults_and_refusals_name_the_key() {
        let config = parse("url = \"http://127.0.0.1:8081\"").unwrap();
        assert!(config.auto_register);
        assert_eq!(config.value_framing, ValueFraming::Registry);
        assert_eq!(config.subject_strategy, SubjectStrategy::TopicName);
        assert!(matches!(config.auth, RegistryAuth::None));
        // Credentials in the URL are refused without being repeated.
        let error = parse("url = \"https://key:s3cr3t@registry.example.org\"").unwrap_err();
        assert!(
            error.contains("schema_registry.url") && !error.contains("s3cr3t"),
            "{error}"
        );
        let error = parse("url = \"registry:8081\"").unwrap_err();
        assert!(error.contains("schema_registry.url"), "{error}");
        let error = parse("url = \"http://r\"\nrequest_timeout_ms = 0").unwrap_err();
        assert!(
            error.contains("schema_registry.request_timeout_ms"),
            "{error}"
        );
        let error = parse(
            "url = \"http://r\"\nauth = { type = \"basic\", user = \"a:b\", password = { env = \"P\" } }",
        )
        .unwrap_err();
        assert!(error.contains("schema_registry.auth.user"), "{error}");
        // A secret given by value is refused without being repeated.
        let error = parse("url = \"http://r\"\nauth = { type = \"bearer\", token = \"hunter2\" }")
            .unwrap_err();
        assert!(
            error.contains("secret reference") && !error.contains("hunter2"),
            "{error}"
        );
        let error = parse("url = \"http://r\"\nsubject_strategy = \"record_name\"").unwrap_err();
        assert!(error.contains("record_name"), "{error}");
    }

    #[test]
    fn credentials_come_from_their_reference() {
        let config = parse(
            "url = \"http://r\"\nauth = { type = \"bearer\", token = { env = \"SNAPFEED_TEST_SURELY_UNSET_TOKEN\" } }",
        )
        .unwrap();
        let error = Registry::start(&config).unwrap_err().to_string();
        assert!(error.contains("schema_registry.auth.token"), "{error}");
    }

    #[test]
    fn subjects_are_path_encoded() {
        assert_eq!(
            encode_path("lab-results.changes-value"),
            "lab-results.changes-value"
        );
        assert_eq!(encode_path("a b/c"), "a%20b%2Fc");
    }
}
