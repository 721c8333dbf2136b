//! [`Registry`]: the client, on a thread of its own with a single-threaded runtime, so a
//! lookup can be made from stage threads and async workers alike without nesting runtimes;
//! its retry policies (start-up registration, mid-run lookups by id) and its errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{basic_authorization, ConfigError};

use super::http::Worker;
use super::{RegistrationError, RegistryAuth, SchemaRegistryConfig};
use crate::avro::LoadedSchema;

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

    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { status: 404, .. })
    }

    /// The registry's own "schema not found" (404 with error code 40403), not a 404 from a
    /// proxy in front of it.
    pub(super) fn is_unknown_schema(&self) -> bool {
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
pub(super) enum Call {
    Register { subject: String, schema: String },
    Lookup { subject: String, schema: String },
    Compatibility { subject: String, schema: String },
    SchemaById { id: u32 },
    Subjects,
}

/// An answer.
#[derive(Debug)]
pub(super) enum Answer {
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

/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Registry {
    /// Resolves the secrets and starts the client's thread.
    pub fn start(config: &SchemaRegistryConfig) -> Result<Arc<Registry>, ConfigError> {
        let authorization = match &config.auth {
            RegistryAuth::None => None,
            RegistryAuth::Basic { user, password } => {
                let password = password.resolve("schema_registry.auth.password")?;
                Some(basic_authorization(user, &password))
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
    pub(super) fn id_under(
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
