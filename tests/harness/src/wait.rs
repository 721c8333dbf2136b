//! Bounded waits on conditions: the only way tests wait. Each polls a condition at a short
//! interval until it holds or a limit passes — never a bare sleep standing in for "it should
//! have happened by now". Polling uses `tokio::time::sleep`, so a wait never blocks a worker.

use std::time::{Duration, Instant};

/// How often [`until`] and [`within`] look at their condition.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Waits until `condition` holds; panics, naming `what`, if `limit` passes first.
pub async fn until(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    assert!(
        within(limit, condition).await,
        "timed out after {limit:?} waiting until {what}"
    );
}

/// Waits until `condition` holds: true as soon as it does, false if `limit` passed first.
pub async fn within(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Calls `probe` every `every` until it returns `Ok(value)`, and returns that value. `Err`
/// describes the state seen (e.g. `"3 of 5 receipts after 90s"`); if `limit` passes first, the
/// last description is the panic message.
pub async fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(state) => assert!(Instant::now() < deadline, "{state}"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn within_reports_a_condition_that_never_holds() {
        assert!(!within(Duration::from_millis(50), || false).await);
        let mut calls = 0;
        assert!(
            within(Duration::from_secs(5), || {
                calls += 1;
                calls == 3
            })
            .await
        );
    }

    #[tokio::test]
    #[should_panic(expected = "2 of 3 after")]
    async fn poll_panics_with_the_last_state() {
        poll(Duration::from_millis(30), Duration::from_millis(5), || {
            Err::<(), _>("2 of 3 after 30ms".to_string())
        })
        .await;
    }
}
