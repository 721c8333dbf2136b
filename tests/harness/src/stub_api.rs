//! A stand-in for the case-management HTTP API that api-sink delivers to.
//!
//! [`StubApi`] is a real HTTP/1.1 server on `127.0.0.1` (hyper) that records every request,
//! answers from a script — rules first, then a queue of [`Reply`]s, then a default — and counts
//! *effects*: distinct `Idempotency-Key`s among the requests it answered 2xx. "Every change
//! delivered, none twice" is then `unique_effects() == expected` however often the sink retried.
//!
//! A request is recorded, and its effect counted, when its reply is chosen, before any
//! [`Reply::delay`]: a client that times out during the delay has still changed the case load —
//! exactly the case the `Idempotency-Key` exists for.
//!
//! It also plays the OAuth2 client-credentials token endpoint (`POST /oauth/token`) and can
//! require a valid, unexpired bearer token, and it can go down (connections refused) and come
//! back on the same port. It keeps CommCare cases from accepted bulk requests and answers
//! CommCare's `bulk-fetch` from them (`commcare`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

mod commcare;

/// Path of the OAuth2 token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";

/// One API request as the stub received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path including the query string.
    pub path: String,
    /// Headers in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Bytes,
    /// The status the stub answered.
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Idempotency-Key` header.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.header("idempotency-key")
    }

    /// The body parsed as JSON; panics (fails the test) when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} body is not JSON ({e}): {:?}",
                self.method, self.path, self.body
            )
        })
    }

    fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A scripted answer.
///
/// A 2xx reply (other than 204) with an empty body is sent with `{"id": "<uuid-like>"}`, the same
/// id for every request carrying the same `Idempotency-Key`, like an API that de-duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response body; sent as `application/json` unless a `Content-Type` header is given.
    pub body: String,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// How long to wait before answering (after the request is recorded).
    pub delay: Duration,
}

impl Reply {
    /// `200 OK` with a generated id.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// A reply with this status and an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: String::new(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// Adds `Retry-After: <secs>`.
    pub fn retry_after(self, secs: u64) -> Self {
        self.with_header("Retry-After", secs.to_string())
    }

    /// Answers only after `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Which API requests a [`Rule`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestMatch {
    /// The body contains this text (e.g. a poison record's accession number).
    BodyContains(String),
    /// The path (with query) starts with this.
    PathStartsWith(String),
}

impl RequestMatch {
    fn matches(&self, request: &RecordedRequest) -> bool {
        match self {
            RequestMatch::BodyContains(needle) => request
                .body
                .windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes()),
            RequestMatch::PathStartsWith(prefix) => request.path.starts_with(prefix.as_str()),
        }
    }
}

/// A standing answer for matching requests, checked before the queue and the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which requests it answers.
    pub when: RequestMatch,
    /// The answer.
    pub reply: Reply,
}

impl Rule {
    /// Answers `reply` to every request whose body contains `needle`.
    pub fn body_contains(needle: impl Into<String>, reply: Reply) -> Self {
        Self {
            when: RequestMatch::BodyContains(needle.into()),
            reply,
        }
    }

    /// Answers `reply` to every request whose path starts with `prefix`.
    pub fn path_starts_with(prefix: impl Into<String>, reply: Reply) -> Self {
        Self {
            when: RequestMatch::PathStartsWith(prefix.into()),
            reply,
        }
    }
}

/// Everything the handlers and the test share. Never locked across an `.await`.
#[derive(Debug)]
struct State {
    requests: Vec<RecordedRequest>,
    rules: Vec<Rule>,
    queue: VecDeque<Reply>,
    default_reply: Reply,
    /// Response id per `Idempotency-Key`, so a repeat gets the id of the first success.
    ids: HashMap<String, String>,
    next_id: u64,
    token_ttl: Duration,
    /// Every issued token with its expiry, in issue order.
    tokens: Vec<(String, Instant)>,
    token_requests: usize,
    require_bearer: bool,
    /// CommCare cases, as accepted bulk requests left them.
    cases: commcare::CaseStore,
}

impl State {
    fn answer(&mut self, mut request: RecordedRequest) -> Reply {
        let mut reply = if self.require_bearer && !self.bearer_is_valid(&request) {
            Reply::status(401)
                .with_body(r#"{"error":"invalid_token"}"#)
                .with_header("WWW-Authenticate", r#"Bearer error="invalid_token""#)
        } else if let Some(rule) = self.rules.iter().find(|rule| rule.when.matches(&request)) {
            rule.reply.clone()
        } else if commcare::is_bulk_fetch(&request) {
            // Answered from the cases; scripted replies are for the requests that change them.
            self.cases.fetch(&request.body)
        } else if let Some(reply) = self.queue.pop_front() {
            reply
        } else {
            self.default_reply.clone()
        };
        request.status = reply.status;
        if request.succeeded() && commcare::is_bulk_upsert(&request) {
            self.cases.apply(&request.body);
        }
        if request.succeeded() && reply.status != 204 && reply.body.is_empty() {
            let id = match request.idempotency_key() {
                Some(key) => match self.ids.get(key) {
                    Some(id) => id.clone(),
                    None => {
                        let id = self.new_id();
                        self.ids.insert(key.to_owned(), id.clone());
                        id
                    }
                },
                None => self.new_id(),
            };
            reply.body = serde_json::json!({ "id": id }).to_string();
        }
        self.requests.push(request);
        reply
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.next_id)
    }

    fn bearer_is_valid(&self, request: &RecordedRequest) -> bool {
        let Some(token) = request
            .header("authorization")
            .and_then(|v| strip_scheme(v, "Bearer"))
        else {
            return false;
        };
        let now = Instant::now();
        self.tokens
            .iter()
            .any(|(issued, expires)| issued == token && now < *expires)
    }

    fn issue_token(&mut self, headers: &[(String, String)], body: &[u8]) -> Reply {
        self.token_requests += 1;
        let form = parse_form(body);
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if field("grant_type") != Some("client_credentials") {
            return Reply::status(400).with_body(r#"{"error":"unsupported_grant_type"}"#);
        }
        let basic = headers.iter().any(|(n, v)| {
            n == "authorization" && strip_scheme(v, "Basic").is_some_and(|c| !c.is_empty())
        });
        if !basic && (field("client_id").is_none() || field("client_secret").is_none()) {
            return Reply::status(401).with_body(r#"{"error":"invalid_client"}"#);
        }
        let token = format!("tok-{}", self.tokens.len() + 1);
        self.tokens
            .push((token.clone(), Instant::now() + self.token_ttl));
        let body = serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_ttl.as_secs(),
        });
        Reply::ok()
            .with_body(body.to_string())
            .with_header("Cache-Control", "no-store")
    }
}

/// `value` without its authorization scheme (compared case-insensitively), if it has that one.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let escaped = (bytes[i] == b'%')
                .then(|| bytes.get(i + 1..i + 3))
                .flatten()
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match (escaped, bytes[i]) {
                (Some(byte), _) => {
                    out.push(byte);
                    i += 2;
                }
                (None, b'+') => out.push(b' '),
                (None, byte) => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not hide what the server recorded.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let reply = {
        let mut state = lock(&state);
        if parts.method == hyper::Method::POST && parts.uri.path() == TOKEN_PATH {
            state.issue_token(&headers, &body)
        } else {
            let path = parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
            state.answer(RecordedRequest {
                method: parts.method.as_str().to_owned(),
                path,
                headers,
                body,
                status: 0,
                at,
            })
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response =
        Response::builder().status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK));
    let has_content_type = reply
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !reply.body.is_empty() && !has_content_type {
        response = response.header("content-type", "application/json");
    }
    for (name, value) in &reply.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    Ok(response
        .body(Full::new(Bytes::from(reply.body)))
        .expect("scripted reply is a valid response"))
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

/// The stub case API. Dropping it (or [`StubApi::stop`]) ends the server.
#[derive(Debug)]
pub struct StubApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// `None` while down.
    server: Option<Server>,
}

impl StubApi {
    /// Binds `127.0.0.1:0` and serves in a tokio task.
    pub async fn start() -> StubApi {
        StubApi::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind 127.0.0.1:0")
    }

    /// Binds `addr` (e.g. `0.0.0.0:8080` in a container) and serves in a tokio task.
    pub fn start_on(addr: SocketAddr) -> std::io::Result<StubApi> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            rules: Vec::new(),
            queue: VecDeque::new(),
            default_reply: Reply::ok(),
            ids: HashMap::new(),
            next_id: 0,
            token_ttl: Duration::from_secs(3600),
            tokens: Vec::new(),
            token_requests: 0,
            require_bearer: false,
            cases: commcare::CaseStore::default(),
        }));
        let server = Some(Server::spawn(listener, Arc::clone(&state)));
        Ok(StubApi {
            addr,
            state,
            server,
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on (kept across [`StubApi::go_down`] / [`StubApi::come_up`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every API request (token requests excluded), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// Distinct `Idempotency-Key` values among requests answered 2xx.
    pub fn unique_effects(&self) -> usize {
        let state = lock(&self.state);
        let keys: BTreeSet<&str> = state
            .requests
            .iter()
            .filter(|r| r.succeeded())
            .filter_map(RecordedRequest::idempotency_key)
            .collect();
        keys.len()
    }

    /// Requests answered 2xx, grouped by `Idempotency-Key` (requests without one are left out).
    pub fn effects_by_idempotency_key(&self) -> BTreeMap<String, Vec<RecordedRequest>> {
        let mut effects: BTreeMap<String, Vec<RecordedRequest>> = BTreeMap::new();
        for request in lock(&self.state).requests.iter().filter(|r| r.succeeded()) {
            if let Some(key) = request.idempotency_key() {
                effects
                    .entry(key.to_owned())
                    .or_default()
                    .push(request.clone());
            }
        }
        effects
    }

    /// Queues replies for the next API requests, in order, before the default applies again.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state).queue.extend(replies);
    }

    /// The reply once rules and queue have nothing to say; initially [`Reply::ok`].
    pub fn set_default_reply(&self, reply: Reply) {
        lock(&self.state).default_reply = reply;
    }

    /// Adds a rule, checked (in the order added) before the queue and the default.
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.state).rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        lock(&self.state).rules.clear();
    }

    /// Lifetime of tokens issued from now on (default one hour); sent as `expires_in` seconds.
    pub fn set_token_ttl(&self, ttl: Duration) {
        lock(&self.state).token_ttl = ttl;
    }

    /// Every access token issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state)
            .tokens
            .iter()
            .map(|(token, _)| token.clone())
            .collect()
    }

    /// Ends the life of every token issued so far, as a server-side revocation would.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for (_, expires) in &mut lock(&self.state).tokens {
            *expires = now;
        }
    }

    /// When on, API requests without `Authorization: Bearer <issued, unexpired token>` get 401.
    pub fn require_bearer(&self, required: bool) {
        lock(&self.state).require_bearer = required;
    }

    /// CommCare forms per case (`external_id`): one per accepted bulk request holding it.
    /// More than one for the same version of a case is a duplicate submission.
    pub fn case_forms(&self) -> BTreeMap<String, usize> {
        lock(&self.state).cases.forms()
    }

    /// How many CommCare cases exist (cheap: no copy of the store).
    pub fn case_count(&self) -> usize {
        lock(&self.state).cases.count()
    }

    /// A CommCare case as `bulk-fetch` shows it.
    pub fn case(&self, external_id: &str) -> Option<serde_json::Value> {
        lock(&self.state).cases.case(external_id)
    }

    /// How many requests reached the token endpoint.
    pub fn token_requests(&self) -> usize {
        lock(&self.state).token_requests
    }

    /// Waits until at least `count` API requests arrived; false if `timeout` passed first.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || lock(&self.state).requests.len() >= count)
            .await
    }

    /// Waits until [`StubApi::unique_effects`] reaches `count`; false if `timeout` passed first.
    pub async fn wait_for_unique_effects(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.unique_effects() >= count)
            .await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops listening and drops open connections: new connections are refused.
    pub async fn go_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Listens again on the same port.
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

impl Drop for StubApi {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::raw_http::{send, RawResponse};

    async fn post(api: &StubApi, idempotency_key: &str, body: &str) -> RawResponse {
        send(
            api.addr(),
            "POST",
            "/cases?profile=commcare",
            &[
                ("Idempotency-Key", idempotency_key),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await
        .unwrap()
    }

    async fn token(api: &StubApi) -> String {
        let response = send(
            api.addr(),
            "POST",
            TOKEN_PATH,
            &[
                ("Authorization", "Basic c25hcGZlZWQ6c2VjcmV0"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            "grant_type=client_credentials&scope=cases%3Awrite",
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200);
        let json = response.json();
        assert_eq!(json["token_type"], "Bearer");
        json["access_token"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn default_reply_is_200_with_an_id() {
        let api = StubApi::start().await;
        assert_eq!(api.url(), format!("http://127.0.0.1:{}", api.addr().port()));
        let response = post(&api, "k1", r#"{"external_id":"x"}"#).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let id = response.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(
            post(&api, "k1", "{}").await.json()["id"],
            id.as_str(),
            "a repeat gets the same id"
        );
        assert_ne!(post(&api, "k2", "{}").await.json()["id"], id.as_str());

        let requests = api.requests();
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, "/cases?profile=commcare");
        assert_eq!(requests[0].header("IDEMPOTENCY-KEY"), Some("k1"));
        assert!(requests[0]
            .headers
            .iter()
            .all(|(n, _)| *n == n.to_lowercase()));
        assert_eq!(requests[0].json()["external_id"], "x");
        assert_eq!(requests[0].status, 200);
        assert!(requests[0].at <= requests[1].at);
        api.stop().await;
    }

    #[tokio::test]
    async fn queued_replies_come_in_order_then_default() {
        let api = StubApi::start().await;
        api.push_replies([
            Reply::status(500),
            Reply::status(429).retry_after(7),
            Reply::status(201).with_body(r#"{"id":"made"}"#),
        ]);
        api.set_default_reply(Reply::status(202));
        let mut statuses = Vec::new();
        let mut retry_after = Vec::new();
        for i in 0..5 {
            let response = post(&api, &format!("k{i}"), "{}").await;
            statuses.push(response.status);
            retry_after.push(response.header("retry-after").map(str::to_owned));
        }
        assert_eq!(statuses, [500, 429, 201, 202, 202]);
        assert_eq!(retry_after[1].as_deref(), Some("7"));
        assert_eq!(retry_after[0], None);
        assert_eq!(
            api.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
            statuses
        );
    }

    #[tokio::test]
    async fn rules_answer_before_the_queue() {
        let api = StubApi::start().await;
        api.push_replies([Reply::status(503)]);
        api.add_rule(Rule::body_contains(
            "ACC0000000666",
            Reply::status(400).with_body(r#"{"error":"bad case"}"#),
        ));
        assert_eq!(
            post(&api, "poison", r#"{"accession":"ACC0000000666"}"#)
                .await
                .status,
            400
        );
        assert_eq!(
            post(&api, "fine", r#"{"accession":"ACC0000000001"}"#)
                .await
                .status,
            503
        );
        api.clear_rules();
        assert_eq!(
            post(&api, "poison", r#"{"accession":"ACC0000000666"}"#)
                .await
                .status,
            200
        );
    }

    #[tokio::test]
    async fn delay_is_honoured() {
        let api = StubApi::start().await;
        api.push_replies([Reply::ok().with_delay(Duration::from_millis(50))]);
        let started = Instant::now();
        assert_eq!(post(&api, "slow", "{}").await.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(50));
        let requests = api.requests();
        assert_eq!(
            requests.len(),
            1,
            "recorded when the reply is chosen, before the delay"
        );
    }

    #[tokio::test]
    async fn unique_effects_count_idempotency_keys_answered_2xx() {
        let api = StubApi::start().await;
        api.push_replies([
            Reply::status(503),
            Reply::ok(),
            Reply::ok(),
            Reply::status(500),
            Reply::status(201),
        ]);
        for key in ["a", "a", "a", "b", "c"] {
            post(&api, key, "{}").await;
        }
        send(api.addr(), "POST", "/cases", &[], "{}").await.unwrap();
        assert_eq!(api.requests().len(), 6);
        assert_eq!(
            api.unique_effects(),
            2,
            "a (twice) and c; b only failed; no key is no effect"
        );
        let effects = api.effects_by_idempotency_key();
        assert_eq!(effects.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(effects["a"].len(), 2);
        assert!(
            api.wait_for_unique_effects(2, Duration::from_millis(100))
                .await
        );
        assert!(
            !api.wait_for_unique_effects(3, Duration::from_millis(20))
                .await
        );
        assert!(api.wait_for_requests(6, Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn go_down_refuses_connections_and_come_up_reuses_the_port() {
        let mut api = StubApi::start().await;
        let addr = api.addr();
        assert_eq!(post(&api, "before", "{}").await.status, 200);

        let mut idle = TcpStream::connect(addr).await.unwrap();
        api.go_down().await;
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(closed, Ok(0) | Err(_)),
            "open connections are dropped"
        );

        api.come_up().await;
        assert_eq!(api.addr(), addr);
        assert_eq!(post(&api, "after", "{}").await.status, 200);
        assert_eq!(api.unique_effects(), 2);

        api.stop().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "stop closes the port"
        );
    }

    #[tokio::test]
    async fn drop_closes_the_port() {
        let api = StubApi::start().await;
        let addr = api.addr();
        drop(api);
        let deadline = Instant::now() + Duration::from_secs(2);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "listener leaked after drop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn bearer_token_is_required_when_on() {
        let api = StubApi::start().await;
        api.require_bearer(true);
        let response = post(&api, "k", "{}").await;
        assert_eq!(response.status, 401);
        assert!(response
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer"));

        let issued = token(&api).await;
        assert_eq!(issued, "tok-1");
        assert_eq!(api.issued_tokens(), ["tok-1"]);
        let auth = format!("Bearer {issued}");
        let ok = send(
            api.addr(),
            "POST",
            "/cases",
            &[("Authorization", auth.as_str()), ("Idempotency-Key", "k")],
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(ok.status, 200);
        let forged = send(
            api.addr(),
            "POST",
            "/cases",
            &[("Authorization", "Bearer tok-99")],
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(forged.status, 401);

        // Generous margins: the request right after issue must beat the TTL on a loaded machine.
        api.set_token_ttl(Duration::from_millis(500));
        let short = token(&api).await;
        assert_eq!(short, "tok-2");
        let auth = format!("Bearer {short}");
        let fresh = send(
            api.addr(),
            "POST",
            "/cases",
            &[("Authorization", auth.as_str())],
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(fresh.status, 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let expired = send(
            api.addr(),
            "POST",
            "/cases",
            &[("Authorization", auth.as_str())],
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(expired.status, 401);

        api.expire_tokens();
        let revoked = send(
            api.addr(),
            "POST",
            "/cases",
            &[("Authorization", "Bearer tok-1")],
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(revoked.status, 401);

        assert_eq!(api.token_requests(), 2);
        assert_eq!(
            api.requests().len(),
            6,
            "token requests are not API requests"
        );
        assert_eq!(api.unique_effects(), 1);
    }

    #[tokio::test]
    async fn token_endpoint_checks_grant_and_client() {
        let api = StubApi::start().await;
        let form = "application/x-www-form-urlencoded";
        let with_form_credentials = send(
            api.addr(),
            "POST",
            TOKEN_PATH,
            &[("Content-Type", form)],
            "grant_type=client_credentials&client_id=snapfeed&client_secret=s%2Bcret",
        )
        .await
        .unwrap();
        assert_eq!(with_form_credentials.status, 200);
        assert_eq!(with_form_credentials.json()["expires_in"], 3600);
        let wrong_grant = send(
            api.addr(),
            "POST",
            TOKEN_PATH,
            &[("Content-Type", form)],
            "grant_type=password&client_id=a&client_secret=b",
        )
        .await
        .unwrap();
        assert_eq!(wrong_grant.status, 400);
        let no_client = send(
            api.addr(),
            "POST",
            TOKEN_PATH,
            &[("Content-Type", form)],
            "grant_type=client_credentials",
        )
        .await
        .unwrap();
        assert_eq!(no_client.status, 401);
        assert_eq!(api.token_requests(), 3);
        assert_eq!(api.issued_tokens().len(), 1);
        assert!(api.requests().is_empty());
    }
}
