//! What to do after a request: [`Classifier`] sorts an outcome into delivered, transient
//! (retry the same change later), credentials refused, or permanent (dead-letter it);
//! [`decide`] turns that, and the attempts before, into the lane's next step; [`Backoff`] says
//! how long a lane waits before the retry; [`RetryBudget`] says when an optional limit is
//! reached; [`GlobalBreaker`] makes every partition back off together while the API is down.
//!
//! - [`classify`] — the result of one request → [`Classification`];
//! - [`decision`] — classification + attempts so far → [`Decision`] (the whole retry policy);
//! - [`backoff`] — [`Backoff`] and [`RetryBudget`];
//! - [`breaker`] — [`GlobalBreaker`].
//!
//! Guarantee: nothing here drops a change. By default a transient failure is retried without
//! limit — the unacknowledged consumer offset *is* the retry state — and only a permanent
//! answer or an explicitly configured budget ends the retries (as a dead letter, never
//! silently). No I/O except reading a response body; no sleeping except
//! [`GlobalBreaker::wait`], on tokio's clock (so tests run it on paused time).

pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod decision;

pub use backoff::{Backoff, RetryBudget};
pub use breaker::GlobalBreaker;
pub use classify::{excerpt, parse_retry_after, Classification, Classifier};
pub use decision::{
    decide, AttemptResult, AttemptsSoFar, Decision, Outcome, REASON_HTTP_4XX,
    REASON_RETRY_BUDGET_EXHAUSTED,
};
