//! A stand-in for the case-management API, for docker-compose and local runs: accepts every
//! request with 200 and an id, de-duplicates by `Idempotency-Key`, issues OAuth2 tokens at
//! `/oauth/token`, and logs counts (never bodies) every 10 seconds until SIGTERM/SIGINT.
//!
//! Usage: `stub-case-api [ADDR]` (default `0.0.0.0:8080`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use snapfeed_harness::stub_api::StubApi;

fn main() -> ExitCode {
    let addr: SocketAddr = match std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0.0.0.0:8080".into())
        .parse()
    {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("error: listen address: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let api = match StubApi::start_on(addr) {
            Ok(api) => api,
            Err(error) => {
                eprintln!("error: cannot listen on {addr}: {error}");
                return ExitCode::from(1);
            }
        };
        eprintln!("stub case API listening on {}", api.addr());
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(1);
            }
        };
        let mut ticker = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = ticker.tick() => eprintln!("requests={} unique_effects={}", api.requests().len(), api.unique_effects()),
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        api.stop().await;
        ExitCode::SUCCESS
    })
}
