//! The rate controller of the API host: one per process (every request goes to `api_url`'s
//! host), shared by every lane of every partition — DESIGN's "good client of a rate-limited
//! API". CommCare rate-limits per project space, so what one lane learns (a 429, a slow
//! answer) holds for all of them.
//!
//! - [`pause`] — [`HostPause`]: a 429 or 503 pauses *every* lane — until its `Retry-After`
//!   has passed, or, without the header, for a shared backoff that grows while the API keeps
//!   refusing and resets on a success.
//! - [`concurrency`] — [`AdaptiveConcurrency`]: requests in flight, an AIMD limit (like
//!   Vector's adaptive request concurrency) between 1 and `max_in_flight`: halved on
//!   back-pressure (429, 5xx, a timeout, an answer much slower than usual), grown by one per
//!   limit's worth of successes.
//! - [`bucket`] — [`TokenBucket`]: `rate_limit_per_second` with `rate_limit_burst` (GCRA).
//!
//! Guarantee: these only ever delay a request; none drops, reorders or dead-letters a
//! change. Every clock reading is passed in or taken from tokio's clock, so tests run them on
//! paused time (which is also why the bucket is our own 30 lines and not `governor`, whose
//! clock tokio cannot pause). Limit: a request already on the wire when a 429 arrives is not
//! recalled; the pause holds every request *sent* after the client read the 429.

pub mod bucket;
pub mod concurrency;
pub mod pause;

pub use bucket::TokenBucket;
pub use concurrency::{AdaptiveConcurrency, ConcurrencyPermit, Feedback};
pub use pause::{HostPause, PauseCause, Paused};
