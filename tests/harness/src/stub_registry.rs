//! A stand-in for the Confluent Schema Registry REST API.
//!
//! [`StubRegistry`] is a real HTTP/1.1 server on `127.0.0.1` (hyper) that keeps subjects,
//! versions and schema ids in memory and answers the subset of the REST API a serializer and a
//! deserializer use: register, look up, fetch by id, list subjects and versions, check
//! compatibility and read the global config. Every answer has
//! `Content-Type: application/vnd.schemaregistry.v1+json`; every error is
//! `{"error_code": <int>, "message": "<text>"}` as Confluent sends it.
//!
//! Schema ids are global per schema text, as in Confluent: the same text under two subjects
//! gets the same id. Texts are compared after parsing the schema string as JSON and
//! re-serialising it, so whitespace does not matter; the text served back for an id is the one
//! first registered with it. `schemaType` and `references` are accepted and ignored.
//!
//! Controls let a test inject failures ([`StubRegistry::fail_next`]), make a subject reject new
//! schemas ([`StubRegistry::force_incompatible`]), make an id unknown
//! ([`StubRegistry::forget`]), require credentials ([`StubRegistry::require_basic`],
//! [`StubRegistry::require_bearer`]) and go down and come back on the same port with the same
//! state ([`StubRegistry::go_down`], [`StubRegistry::come_up`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use snapfeed_runtime::config::{basic_authorization, Secret};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The media type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// One request as the stub registry received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path including the query string, as sent (still percent-encoded).
    pub path: String,
    /// The status the stub answered.
    pub status: u16,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// A schema known to the registry (its canonical text is the key of `State::ids`).
#[derive(Debug)]
struct Schema {
    /// The text as first registered; what lookups serve.
    text: String,
}

/// Credentials every request must carry.
#[derive(Debug, Clone)]
enum Auth {
    /// `Basic <base64(user:password)>`.
    Basic(String),
    /// `Bearer <token>`.
    Bearer(String),
}

impl Auth {
    fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        match self {
            Auth::Basic(encoded) => strip_scheme(value, "Basic") == Some(encoded.as_str()),
            Auth::Bearer(token) => strip_scheme(value, "Bearer") == Some(token.as_str()),
        }
    }
}

/// An answer: status and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body: body.to_string(),
        }
    }

    fn error(status: u16, error_code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error_code": error_code, "message": message.into() }).to_string(),
        }
    }

    fn not_found() -> Self {
        Self::error(404, 404, "not found")
    }

    fn subject_not_found(subject: &str) -> Self {
        Self::error(404, 40401, format!("Subject '{subject}' not found."))
    }

    fn version_not_found(version: u32) -> Self {
        Self::error(404, 40402, format!("Version {version} not found."))
    }

    fn invalid_schema() -> Self {
        Self::error(422, 42201, "Invalid schema")
    }
}

/// Why a registration was refused.
#[derive(Debug)]
enum RegisterError {
    InvalidSchema,
    Incompatible(String),
}

/// A version in a path: a number or `latest` (also `-1`).
#[derive(Debug, Clone, Copy)]
enum VersionRef {
    Latest,
    Number(u32),
}

impl VersionRef {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "latest" | "-1" => Some(VersionRef::Latest),
            _ => text.parse().ok().filter(|n| *n > 0).map(VersionRef::Number),
        }
    }
}

/// Everything the handlers and the test share. Never locked across an `.await`.
#[derive(Debug)]
struct State {
    requests: Vec<RegistryRequest>,
    /// Schemas by global id.
    schemas: BTreeMap<u32, Schema>,
    /// Global id by canonical text.
    ids: HashMap<String, u32>,
    next_id: u32,
    /// The ids of each subject's versions; version `n` is at index `n - 1`.
    subjects: BTreeMap<String, Vec<u32>>,
    /// Subjects marked incompatible, with the reason.
    incompatible: BTreeMap<String, String>,
    /// Ids whose lookups answer 404.
    forgotten: BTreeSet<u32>,
    /// Requests left to answer with an injected failure, and its status.
    fail_next: usize,
    fail_status: u16,
    auth: Option<Auth>,
}

impl State {
    fn new() -> Self {
        Self {
            requests: Vec::new(),
            schemas: BTreeMap::new(),
            ids: HashMap::new(),
            next_id: 1,
            subjects: BTreeMap::new(),
            incompatible: BTreeMap::new(),
            forgotten: BTreeSet::new(),
            fail_next: 0,
            fail_status: 503,
            auth: None,
        }
    }

    fn answer(
        &mut self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Answer {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            let status = self.fail_status;
            // 50003 is Confluent's "error forwarding the request"; other codes keep the status.
            let code = if status >= 500 {
                50003
            } else {
                u32::from(status)
            };
            return Answer::error(status, code, "stub registry: injected failure");
        }
        if let Some(auth) = &self.auth {
            if !auth.accepts(authorization) {
                return Answer::error(401, 401, "Unauthorized");
            }
        }
        let segments: Vec<String> = path
            .strip_prefix('/')
            .unwrap_or(path)
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method, segments.as_slice()) {
            (&Method::POST, ["subjects", subject, "versions"]) => self.post_register(subject, body),
            (&Method::POST, ["subjects", subject]) => self.post_lookup(subject, body),
            (&Method::GET, ["schemas", "ids", id]) => self.get_schema(id),
            (&Method::GET, ["schemas", "ids", id, "versions"]) => self.get_schema_versions(id),
            (&Method::GET, ["subjects"]) => Answer::ok(json!(self.subject_names())),
            (&Method::GET, ["subjects", subject, "versions"]) => {
                match self.subjects.get(*subject) {
                    Some(ids) => Answer::ok(json!((1..=ids.len()).collect::<Vec<_>>())),
                    None => Answer::subject_not_found(subject),
                }
            }
            (&Method::GET, ["subjects", subject, "versions", version]) => {
                self.get_version(subject, version)
            }
            (&Method::POST, ["compatibility", "subjects", subject, "versions", version]) => {
                self.post_compatibility(subject, Some(*version), body)
            }
            (&Method::POST, ["compatibility", "subjects", subject, "versions"]) => {
                self.post_compatibility(subject, None, body)
            }
            (&Method::GET, ["config"]) => Answer::ok(json!({ "compatibilityLevel": "BACKWARD" })),
            _ => Answer::not_found(),
        }
    }

    fn post_register(&mut self, subject: &str, body: &[u8]) -> Answer {
        let Some(text) = schema_of(body) else {
            return Answer::invalid_schema();
        };
        match self.register(subject, &text) {
            Ok(id) => Answer::ok(json!({ "id": id })),
            Err(RegisterError::InvalidSchema) => Answer::invalid_schema(),
            Err(RegisterError::Incompatible(reason)) => Answer::error(
                409,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject \
                     \"{subject}\", details: [{reason}]"
                ),
            ),
        }
    }

    fn post_lookup(&self, subject: &str, body: &[u8]) -> Answer {
        let Some(text) = schema_of(body) else {
            return Answer::invalid_schema();
        };
        let Some(canonical) = canonical(&text) else {
            return Answer::invalid_schema();
        };
        let Some(ids) = self.subjects.get(subject) else {
            return Answer::subject_not_found(subject);
        };
        let found = self.ids.get(&canonical).and_then(|id| {
            ids.iter()
                .position(|v| v == id)
                .map(|index| (*id, index + 1))
        });
        match found {
            Some((id, version)) => self.version_answer(subject, id, version),
            None => Answer::error(404, 40403, "Schema not found"),
        }
    }

    fn get_schema(&self, id: &str) -> Answer {
        match id.parse::<u32>().ok().and_then(|id| self.known(id)) {
            Some(schema) => Answer::ok(json!({ "schema": schema.text })),
            None => Answer::error(404, 40403, format!("Schema {id} not found")),
        }
    }

    fn get_schema_versions(&self, id: &str) -> Answer {
        let Some(id) = id
            .parse::<u32>()
            .ok()
            .filter(|id| self.known(*id).is_some())
        else {
            return Answer::error(404, 40403, format!("Schema {id} not found"));
        };
        let versions: Vec<Value> = self
            .subjects
            .iter()
            .flat_map(|(subject, ids)| {
                ids.iter()
                    .enumerate()
                    .filter(|(_, v)| **v == id)
                    .map(move |(index, _)| json!({ "subject": subject, "version": index + 1 }))
            })
            .collect();
        Answer::ok(Value::Array(versions))
    }

    fn get_version(&self, subject: &str, version: &str) -> Answer {
        let Some(ids) = self.subjects.get(subject) else {
            return Answer::subject_not_found(subject);
        };
        let Some(wanted) = VersionRef::parse(version) else {
            return invalid_version(version);
        };
        let number = match wanted {
            VersionRef::Latest => ids.len(),
            VersionRef::Number(n) => n as usize,
        };
        match ids.get(number.wrapping_sub(1)) {
            Some(id) => self.version_answer(subject, *id, number),
            None => match wanted {
                VersionRef::Number(n) => Answer::version_not_found(n),
                VersionRef::Latest => Answer::subject_not_found(subject),
            },
        }
    }

    fn post_compatibility(&self, subject: &str, version: Option<&str>, body: &[u8]) -> Answer {
        if schema_of(body).and_then(|text| canonical(&text)).is_none() {
            return Answer::invalid_schema();
        }
        if let Some(reason) = self.incompatible.get(subject) {
            return Answer::ok(json!({ "is_compatible": false, "messages": [reason] }));
        }
        if let (Some(version), Some(ids)) = (version, self.subjects.get(subject)) {
            match VersionRef::parse(version) {
                None => return invalid_version(version),
                Some(VersionRef::Number(n)) if n as usize > ids.len() => {
                    return Answer::version_not_found(n);
                }
                Some(_) => {}
            }
        }
        Answer::ok(json!({ "is_compatible": true, "messages": [] }))
    }

    fn version_answer(&self, subject: &str, id: u32, version: usize) -> Answer {
        let text = self.schemas.get(&id).map_or("", |s| s.text.as_str());
        Answer::ok(json!({
            "subject": subject,
            "id": id,
            "version": version,
            "schema": text,
        }))
    }

    /// The schema with this id, unless unknown or forgotten.
    fn known(&self, id: u32) -> Option<&Schema> {
        if self.forgotten.contains(&id) {
            return None;
        }
        self.schemas.get(&id)
    }

    fn subject_names(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }

    fn register(&mut self, subject: &str, text: &str) -> Result<u32, RegisterError> {
        let canonical = canonical(text).ok_or(RegisterError::InvalidSchema)?;
        let existing = self.ids.get(&canonical).copied();
        if let (Some(id), Some(ids)) = (existing, self.subjects.get(subject)) {
            if ids.contains(&id) {
                return Ok(id);
            }
        }
        if let Some(reason) = self.incompatible.get(subject) {
            return Err(RegisterError::Incompatible(reason.clone()));
        }
        let id = match existing {
            Some(id) => id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.ids.insert(canonical, id);
                self.schemas.insert(
                    id,
                    Schema {
                        text: text.to_owned(),
                    },
                );
                id
            }
        };
        self.subjects
            .entry(subject.to_owned())
            .or_default()
            .push(id);
        Ok(id)
    }
}

fn invalid_version(version: &str) -> Answer {
    Answer::error(
        422,
        42202,
        format!(
            "The specified version '{version}' is not a valid version id. Allowed values are \
             between [1, 2^31-1] and the string \"latest\""
        ),
    )
}

/// The `schema` field of a request body, if the body is JSON with a string `schema`.
fn schema_of(body: &[u8]) -> Option<String> {
    let body: Value = serde_json::from_slice(body).ok()?;
    body.get("schema")?.as_str().map(str::to_owned)
}

/// The schema text parsed as JSON and re-serialised, or `None` when it is not JSON.
fn canonical(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text)
        .ok()
        .map(|value| value.to_string())
}

/// `value` without its authorization scheme (compared case-insensitively), if it has that one.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Decodes `%XX` escapes in a path segment; anything else (including `+`) is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not hide what the server recorded.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let authorization = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let answer = {
        let mut state = lock(&state);
        let answer = state.answer(
            &parts.method,
            parts.uri.path(),
            authorization.as_deref(),
            &body,
        );
        state.requests.push(RegistryRequest {
            method: parts.method.as_str().to_owned(),
            path,
            status: answer.status,
            authorization,
        });
        answer
    };
    Ok(Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(Bytes::from(answer.body)))
        .expect("registry answer is a valid response"))
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Lets `come_up` rebind the port while closed connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The accept loop and its connections, running in one task.
#[derive(Debug)]
struct Server {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    fn spawn(listener: TcpListener, state: Arc<Mutex<State>>) -> Self {
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Dropping the set aborts every open connection with it.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    // Also fires when the sender is dropped.
                    _ = &mut stop => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = Arc::clone(&state);
                        connections.spawn(async move {
                            let service = service_fn(move |request| handle(Arc::clone(&state), request));
                            // A client hanging up mid-request is its business, not a test failure.
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            connections.shutdown().await;
        });
        Self { shutdown, task }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// The stub schema registry. Dropping it (or [`StubRegistry::stop`]) ends the server.
#[derive(Debug)]
pub struct StubRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// `None` while down.
    server: Option<Server>,
}

impl StubRegistry {
    /// Binds `127.0.0.1:0` and serves in a tokio task.
    pub async fn start() -> StubRegistry {
        StubRegistry::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind 127.0.0.1:0")
    }

    /// Binds `addr` (e.g. `0.0.0.0:8081` in a container) and serves in a tokio task.
    pub fn start_on(addr: SocketAddr) -> std::io::Result<StubRegistry> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new()));
        let server = Some(Server::spawn(listener, Arc::clone(&state)));
        Ok(StubRegistry {
            addr,
            state,
            server,
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on (kept across [`StubRegistry::go_down`] /
    /// [`StubRegistry::come_up`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers the next `count` requests (any path, before the credentials check) with
    /// `status` and an error body — error code `50003` for a 5xx, `status` otherwise. They are
    /// recorded like any other request. Replaces an earlier count that has not run out.
    pub fn fail_next(&self, count: usize, status: u16) {
        let mut state = lock(&self.state);
        state.fail_next = count;
        state.fail_status = status;
    }

    /// From now on, registering a new schema under `subject` answers 409 with `reason` in the
    /// message, and compatibility checks against it answer `is_compatible: false`. A text
    /// already registered under the subject still gets its id back.
    pub fn force_incompatible(&self, subject: &str, reason: &str) {
        lock(&self.state)
            .incompatible
            .insert(subject.to_owned(), reason.to_owned());
    }

    /// From now on, lookups by `id` (`GET /schemas/ids/{id}`, `.../versions`) answer 404 with
    /// error code 40403, and [`StubRegistry::schema_text`] answers `None`, as if the registry
    /// had never known it. Subjects keep listing it, and registering its text returns it.
    pub fn forget(&self, id: u32) {
        lock(&self.state).forgotten.insert(id);
    }

    /// Requires `Authorization: Basic <base64(user:password)>` on every request; others get
    /// 401. Replaces any bearer requirement.
    pub fn require_basic(&self, user: &str, password: &str) {
        // The clients' own encoder (its RFC 4648 vectors are tested where it lives).
        let header = basic_authorization(user, &Secret::new(password));
        let encoded = header.strip_prefix("Basic ").unwrap_or(&header).to_owned();
        lock(&self.state).auth = Some(Auth::Basic(encoded));
    }

    /// Requires `Authorization: Bearer <token>` on every request; others get 401. Replaces
    /// any basic requirement.
    pub fn require_bearer(&self, token: &str) {
        lock(&self.state).auth = Some(Auth::Bearer(token.to_owned()));
    }

    /// Registers `schema_text` under `subject` by the rules of `POST /subjects/{s}/versions`
    /// and returns its id. Panics (fails the test) when the text is not JSON or the subject
    /// was marked incompatible and does not hold the text yet.
    pub fn register(&self, subject: &str, schema_text: &str) -> u32 {
        match lock(&self.state).register(subject, schema_text) {
            Ok(id) => id,
            Err(RegisterError::InvalidSchema) => {
                panic!("stub registry: schema for {subject:?} is not JSON: {schema_text}")
            }
            Err(RegisterError::Incompatible(reason)) => {
                panic!("stub registry: {subject:?} was forced incompatible: {reason}")
            }
        }
    }

    /// The text registered with `id` (as first registered); `None` when unknown or forgotten.
    pub fn schema_text(&self, id: u32) -> Option<String> {
        lock(&self.state).known(id).map(|s| s.text.clone())
    }

    /// Every subject with at least one version, sorted.
    pub fn subjects(&self) -> Vec<String> {
        lock(&self.state).subject_names()
    }

    /// The ids of `subject`'s versions, version 1 first; empty when it has none.
    pub fn subject_ids(&self, subject: &str) -> Vec<u32> {
        lock(&self.state)
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    /// Every request, in arrival order.
    pub fn requests(&self) -> Vec<RegistryRequest> {
        lock(&self.state).requests.clone()
    }

    /// How many requests arrived (cheap: no copy).
    pub fn request_count(&self) -> usize {
        lock(&self.state).requests.len()
    }

    /// Stops listening and drops open connections: new connections are refused.
    pub async fn go_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Listens again on the same port, with the same subjects, ids and controls.
    pub async fn come_up(&mut self) {
        if self.server.is_none() {
            let listener = bind(self.addr).unwrap_or_else(|e| panic!("rebind {}: {e}", self.addr));
            self.server = Some(Server::spawn(listener, Arc::clone(&self.state)));
        }
    }

    /// Stops the server and waits until its port is closed.
    pub async fn stop(mut self) {
        self.go_down().await;
    }
}

impl Drop for StubRegistry {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
