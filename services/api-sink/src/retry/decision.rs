//! The retry decision: after each attempt at a request, [`decide`] says what the lane does next
//! — the request is done (its [`Outcome`]: delivered or dead-lettered), the credentials are
//! renewed and the request sent again at once, or the lane waits and retries. A plain function of what happened and
//! what came before, so the whole policy is read, and tested, here; the lane's I/O loop
//! (`deliver::attempt`) only carries it out.
//!
//! The policy:
//! - a 2xx: delivered;
//! - transient (no response, or a status in `transient_statuses`): retried after the backoff
//!   (a `Retry-After` as its floor) until the optional [`RetryBudget`] is spent, then
//!   dead-lettered as [`REASON_RETRY_BUDGET_EXHAUSTED`];
//! - credentials refused (401/403): the first 401 of a request that carried credentials renews
//!   them and sends the request again at once (an expired or revoked token); after that 401 and
//!   403 are retried with backoff, a 401 forgetting the rejected credentials first. No change is
//!   at fault: dead-lettering every change until someone rotates a key would empty the stream
//!   into the dead letters, so the budget does not apply;
//! - no credentials could be had at all (token endpoint down): retried with backoff, the budget
//!   not applying either, for the same reason;
//! - any other answer: dead-lettered as [`REASON_HTTP_4XX`] with the start of the response body.
//!
//! Guarantee: every answer leads to a delivery, a dead letter (which the caller records before
//! the offset moves) or another attempt — nothing is dropped here.

use std::time::Duration;

use tokio::time::Instant;

use super::{Backoff, Classification, RetryBudget};

/// Dead-letter reason when `max_attempts` or `max_retry_age_ms` is exceeded.
pub const REASON_RETRY_BUDGET_EXHAUSTED: &str = "retry_budget_exhausted";
/// Dead-letter reason for a permanent answer (a 4xx not listed as transient, an unlisted 5xx,
/// a request that cannot be built).
pub const REASON_HTTP_4XX: &str = "http_4xx";

/// What one attempt came to.
#[derive(Debug, Clone, Copy)]
pub enum AttemptResult<'a> {
    /// No request went out: no credentials could be had.
    NoCredentials,
    /// The request went out; its result, classified.
    Sent {
        /// The classification of the result.
        classification: &'a Classification,
        /// Whether it carried an `Authorization` header (only those can be renewed).
        with_credentials: bool,
    },
}

/// What the decision needs to know about the attempts before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptsSoFar {
    /// Attempts made at this request, the one just decided on included.
    pub count: u32,
    /// When the first one started.
    pub first_at: Instant,
    /// Whether the credentials were already renewed after a 401 for this request.
    pub reauthenticated: bool,
}

/// How a change ended: what its receipt or dead letter records. A request's outcome holds for
/// every change it carried; a change that never became a request gets one too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The API took it: a receipt goes to `deliveries`.
    Delivered {
        /// The response status.
        status: u16,
        /// The API's id for the effect, if it gave one.
        response_id: Option<String>,
    },
    /// It will not be delivered (unless redriven): a dead letter goes to `dead-letters`.
    DeadLetter {
        /// Why, from a fixed set (the metric label and the letter's `reason`), e.g.
        /// [`REASON_HTTP_4XX`] or [`REASON_RETRY_BUDGET_EXHAUSTED`].
        reason: &'static str,
        /// The last response status, if a response came.
        status: Option<u16>,
        /// The start of the refusing response's body: the API's words, possibly about health
        /// data — for the dead letter, never for logs.
        excerpt: Option<String>,
    },
}

impl Outcome {
    /// A change the API was found holding after an ambiguous failure (`request::confirm`):
    /// delivered by the earlier send; the lookup's answer gives no id for that effect.
    pub const CONFIRMED: Outcome = Outcome::Delivered {
        status: 200,
        response_id: None,
    };
}

/// What the lane does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request is over: record this outcome.
    Done(Outcome),
    /// Forget the rejected credentials and send the request again at once.
    Reauthenticate,
    /// Wait, then send the request again.
    Retry {
        /// How long to wait.
        after: Duration,
        /// Forget the rejected credentials before the next attempt (after a repeated 401).
        forget_credentials: bool,
    },
}

/// The next step after an attempt; `backoff` is the request's own (it draws the jitter), `now`
/// the time the attempt ended.
pub fn decide(
    result: AttemptResult<'_>,
    so_far: AttemptsSoFar,
    budget: &RetryBudget,
    backoff: &mut Backoff,
    now: Instant,
) -> Decision {
    let (classification, with_credentials) = match result {
        AttemptResult::NoCredentials => {
            return Decision::Retry {
                after: backoff.next_delay(so_far.count, None),
                forget_credentials: false,
            }
        }
        AttemptResult::Sent {
            classification,
            with_credentials,
        } => (classification, with_credentials),
    };
    match classification {
        Classification::Delivered {
            status,
            response_id,
        } => Decision::Done(Outcome::Delivered {
            status: *status,
            response_id: response_id.clone(),
        }),
        Classification::Unauthorized { status } => {
            let expired = *status == 401 && with_credentials;
            if expired && !so_far.reauthenticated {
                return Decision::Reauthenticate;
            }
            Decision::Retry {
                after: backoff.next_delay(so_far.count, None),
                forget_credentials: expired,
            }
        }
        Classification::Transient {
            status,
            retry_after,
            ..
        } => {
            if budget.is_exhausted(so_far.count, so_far.first_at, now) {
                return Decision::Done(Outcome::DeadLetter {
                    reason: REASON_RETRY_BUDGET_EXHAUSTED,
                    status: *status,
                    excerpt: None,
                });
            }
            Decision::Retry {
                after: backoff.next_delay(so_far.count, *retry_after),
                forget_credentials: false,
            }
        }
        Classification::Permanent { status, excerpt } => Decision::Done(Outcome::DeadLetter {
            reason: REASON_HTTP_4XX,
            status: *status,
            excerpt: Some(excerpt.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;

    fn transient(status: Option<u16>, retry_after: Option<Duration>) -> Classification {
        Classification::Transient {
            status,
            retry_after,
            reason: if status.is_some() {
                "server_error"
            } else {
                "connect_error"
            },
        }
    }

    fn sent(classification: &Classification) -> AttemptResult<'_> {
        AttemptResult::Sent {
            classification,
            with_credentials: true,
        }
    }

    fn so_far(count: u32, first_at: Instant) -> AttemptsSoFar {
        AttemptsSoFar {
            count,
            first_at,
            reauthenticated: false,
        }
    }

    /// Default config: unlimited budget, 500 ms initial backoff, 60 s cap.
    fn unlimited() -> (RetryBudget, Backoff) {
        let retry = RetryConfig::default();
        (RetryBudget::new(&retry), Backoff::with_seed(&retry, 1))
    }

    fn limited(max_attempts: Option<u32>, max_retry_age_ms: Option<u64>) -> (RetryBudget, Backoff) {
        let retry = RetryConfig {
            max_attempts,
            max_retry_age_ms,
            ..RetryConfig::default()
        };
        (RetryBudget::new(&retry), Backoff::with_seed(&retry, 1))
    }

    #[test]
    fn a_2xx_is_delivered_with_its_id() {
        let (budget, mut backoff) = unlimited();
        let now = Instant::now();
        let ok = Classification::Delivered {
            status: 201,
            response_id: Some("case-9".into()),
        };
        assert_eq!(
            decide(sent(&ok), so_far(3, now), &budget, &mut backoff, now),
            Decision::Done(Outcome::Delivered {
                status: 201,
                response_id: Some("case-9".into())
            })
        );
    }

    #[test]
    fn a_permanent_answer_is_dead_lettered_with_its_excerpt_at_once() {
        let (budget, mut backoff) = unlimited();
        let now = Instant::now();
        let refused = Classification::Permanent {
            status: Some(422),
            excerpt: r#"{"error":"bad"}"#.into(),
        };
        assert_eq!(
            decide(sent(&refused), so_far(1, now), &budget, &mut backoff, now),
            Decision::Done(Outcome::DeadLetter {
                reason: REASON_HTTP_4XX,
                status: Some(422),
                excerpt: Some(r#"{"error":"bad"}"#.into())
            })
        );
    }

    #[test]
    fn a_transient_failure_waits_within_the_backoff_ceiling_or_as_long_as_asked() {
        let (budget, mut backoff) = unlimited();
        let now = Instant::now();
        for count in 1..=12 {
            let Decision::Retry {
                after,
                forget_credentials,
            } = decide(
                sent(&transient(Some(503), None)),
                so_far(count, now),
                &budget,
                &mut backoff,
                now,
            )
            else {
                panic!("a 503 is retried without a budget");
            };
            assert!(
                after <= backoff.ceiling(count),
                "attempt {count}: {after:?}"
            );
            assert!(!forget_credentials);
        }
        let asked = transient(Some(429), Some(Duration::from_secs(90)));
        assert_eq!(
            decide(sent(&asked), so_far(1, now), &budget, &mut backoff, now),
            Decision::Retry {
                after: Duration::from_secs(90),
                forget_credentials: false
            },
            "Retry-After is honoured beyond max_backoff"
        );
    }

    #[test]
    fn the_attempt_budget_dead_letters_a_transient_failure_with_its_last_status() {
        let (budget, mut backoff) = limited(Some(3), None);
        let now = Instant::now();
        let failure = transient(Some(503), None);
        assert!(matches!(
            decide(sent(&failure), so_far(2, now), &budget, &mut backoff, now),
            Decision::Retry { .. }
        ));
        assert_eq!(
            decide(sent(&failure), so_far(3, now), &budget, &mut backoff, now),
            Decision::Done(Outcome::DeadLetter {
                reason: REASON_RETRY_BUDGET_EXHAUSTED,
                status: Some(503),
                excerpt: None
            })
        );
        let unreachable = transient(None, None);
        assert!(matches!(
            decide(
                sent(&unreachable),
                so_far(3, now),
                &budget,
                &mut backoff,
                now
            ),
            Decision::Done(Outcome::DeadLetter { status: None, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_budget_counts_from_the_first_attempt() {
        let (budget, mut backoff) = limited(None, Some(60_000));
        let first = Instant::now();
        let failure = transient(None, None);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            decide(
                sent(&failure),
                so_far(40, first),
                &budget,
                &mut backoff,
                Instant::now()
            ),
            Decision::Retry { .. }
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            decide(
                sent(&failure),
                so_far(41, first),
                &budget,
                &mut backoff,
                Instant::now()
            ),
            Decision::Done(Outcome::DeadLetter {
                reason: REASON_RETRY_BUDGET_EXHAUSTED,
                ..
            })
        ));
    }

    #[test]
    fn the_first_401_renews_the_credentials_then_401_and_403_wait_never_dead_letter() {
        // Even a spent budget never dead-letters a change for refused credentials.
        let (budget, mut backoff) = limited(Some(1), Some(1));
        let start = Instant::now();
        let later = start + Duration::from_secs(3600);
        let refused = Classification::Unauthorized { status: 401 };
        assert_eq!(
            decide(
                sent(&refused),
                so_far(1, start),
                &budget,
                &mut backoff,
                start
            ),
            Decision::Reauthenticate
        );
        let renewed = AttemptsSoFar {
            reauthenticated: true,
            ..so_far(2, start)
        };
        let Decision::Retry {
            after,
            forget_credentials: true,
        } = decide(sent(&refused), renewed, &budget, &mut backoff, later)
        else {
            panic!("a second 401 waits and forgets the rejected credentials");
        };
        assert!(after <= backoff.ceiling(2));
        let forbidden = Classification::Unauthorized { status: 403 };
        assert!(matches!(
            decide(
                sent(&forbidden),
                so_far(5, start),
                &budget,
                &mut backoff,
                later
            ),
            Decision::Retry {
                forget_credentials: false,
                ..
            }
        ));
    }

    #[test]
    fn a_401_without_credentials_has_nothing_to_renew() {
        let (budget, mut backoff) = unlimited();
        let now = Instant::now();
        let refused = Classification::Unauthorized { status: 401 };
        let without = AttemptResult::Sent {
            classification: &refused,
            with_credentials: false,
        };
        assert!(matches!(
            decide(without, so_far(1, now), &budget, &mut backoff, now),
            Decision::Retry {
                forget_credentials: false,
                ..
            }
        ));
    }

    #[test]
    fn no_credentials_at_all_is_retried_with_backoff_whatever_the_budget() {
        let (budget, mut backoff) = limited(Some(1), None);
        let now = Instant::now();
        for count in [1, 2, 50] {
            let decision = decide(
                AttemptResult::NoCredentials,
                so_far(count, now),
                &budget,
                &mut backoff,
                now,
            );
            let Decision::Retry { after, .. } = decision else {
                panic!("no credentials is never a dead letter: {decision:?}");
            };
            assert!(after <= backoff.ceiling(count));
        }
    }
}
