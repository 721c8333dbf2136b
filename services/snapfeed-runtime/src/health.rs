//! `/metrics` (Prometheus text format), `/healthz` (the process is alive and serving) and
//! `/readyz` (the service can do its work: connected, assigned, restored — each service names
//! its own conditions) on one port.
//!
//! Readiness is a set of named conditions, all of which must hold; `/readyz` answers 503 with the
//! names of the unmet ones, so an operator sees *why* a pod is not ready. No record data is ever
//! served here.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::shutdown::Shutdown;

/// The `[http]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for `/metrics`, `/healthz`, `/readyz`. Port 0 picks a free port (tests).
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "0.0.0.0:9090".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

impl HttpConfig {
    /// The parsed listen address.
    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "http.listen",
                format!("{:?}", self.listen),
                "an ip:port such as 0.0.0.0:9090",
            )
        })
    }
}

/// Named readiness conditions; ready when every registered condition holds.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// Registers or updates a condition.
    pub fn set(&self, condition: &'static str, holds: bool) {
        if let Ok(mut conditions) = self.conditions.lock() {
            conditions.insert(condition, holds);
        }
    }

    /// True when every condition holds (and at least one is registered).
    pub fn is_ready(&self) -> bool {
        self.unmet().is_empty()
            && self
                .conditions
                .lock()
                .map(|c| !c.is_empty())
                .unwrap_or(false)
    }

    /// Names of the conditions that do not hold.
    pub fn unmet(&self) -> Vec<&'static str> {
        self.conditions
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(_, holds)| !**holds)
                    .map(|(name, _)| *name)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (http.listen): {source}")]
pub struct HealthServerError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A running endpoint.
#[derive(Debug)]
pub struct HealthServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// Binds and serves until `shutdown` fires.
    pub async fn start(
        addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
        shutdown: Shutdown,
    ) -> Result<HealthServer, HealthServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HealthServerError { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| HealthServerError { addr, source })?;
        let task = tokio::spawn(serve(listener, registry, readiness, shutdown));
        Ok(HealthServer { addr: bound, task })
    }

    /// Waits for the server task to end (after shutdown fired).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    /// Stops serving now (the stage ended on its own, without a shutdown signal).
    pub fn abort(self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    registry: Registry,
    readiness: Readiness,
    mut shutdown: Shutdown,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let registry = registry.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(request.uri().path(), &registry, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(path: &str, registry: &Registry, readiness: &Readiness) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if readiness.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let unmet = readiness.unmet();
                let reasons = if unmet.is_empty() {
                    "starting".to_string()
                } else {
                    unmet.join(", ")
                };
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {reasons}\n"),
                )
            }
        }
        "/metrics" => {
            let mut body = Vec::new();
            match TextEncoder::new().encode(&registry.gather(), &mut body) {
                Ok(()) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    if let Ok(value) = TextEncoder::new().format_type().parse() {
                        response
                            .headers_mut()
                            .insert(hyper::header::CONTENT_TYPE, value);
                    }
                    response
                }
                Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (status, body)
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics_until_shutdown() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("snapfeed_test_things_total", "things").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let readiness = Readiness::default();
        let (trigger, shutdown) = crate::shutdown::channel();
        let server = HealthServer::start(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            readiness.clone(),
            shutdown,
        )
        .await
        .unwrap();

        assert_eq!(get(server.addr, "/healthz").await.0, 200);
        let (status, body) = get(server.addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
        readiness.set("connected", true);
        readiness.set("restored", false);
        assert_eq!(
            get(server.addr, "/readyz").await,
            (503, "not ready: restored\n".into())
        );
        readiness.set("restored", true);
        assert_eq!(get(server.addr, "/readyz").await.0, 200);
        let (status, body) = get(server.addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("snapfeed_test_things_total 3"), "{body}");

        trigger.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(5), server.stopped())
            .await
            .unwrap();
    }
}
