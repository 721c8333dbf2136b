//! A lane's run of decoded changes → requests, sent in order ([`deliver_changes`]).
//!
//! The profile groups the run into requests (only CommCare carries several changes per
//! request). A change that cannot become a request is dead-lettered as
//! `request_build_failed`, and the changes before and after it are delivered around it. A
//! CommCare batch refused with a 400 is bisected: each half is delivered again the way a whole
//! run is — rebuilt, sent, and bisected again if refused — down to the change(s) the API
//! refuses, and only those are dead-lettered. A half is never abandoned: were one of its
//! changes not to become a request on the rebuild, it is dead-lettered like any other.
//!
//! Guarantee: every change of the run ends in exactly one outcome — delivered or
//! dead-lettered — unless the lane halts (revoked, stopping, or an outcome it cannot record),
//! in which case the rest of the run stays undone and is delivered again from the committed
//! offset. The algorithm is written against [`RunTarget`], so it is tested here with a
//! scripted API instead of a broker and an HTTP server.

use super::attempt::Attempts;
use super::{Halt, Outcome};
use crate::request::{
    BatchBuildError, BuildError, DecodedChange, PreparedBatch, REASON_REQUEST_BUILD_FAILED,
};
use crate::retry::REASON_HTTP_4XX;

/// How one request ended.
#[derive(Debug)]
pub(super) enum Sent {
    /// One outcome for every member.
    Done(Outcome, Attempts),
    /// After an ambiguous failure — or before the first send of changes an earlier run may
    /// have sent — the API was asked (`request::confirm`): these members (`true`, in member
    /// order) already took effect; the others are to be sent (again).
    PartlyLanded {
        /// Per member, whether it took effect.
        landed: Vec<bool>,
        /// The attempts so far.
        attempts: Attempts,
    },
}

/// What delivering a run needs: the lane in production, a script in the tests. `index` is a
/// change's position in the run.
pub(super) trait RunTarget {
    /// Requests for `changes`, in the order they must be sent.
    fn build(&self, changes: &[DecodedChange<'_>]) -> Result<Vec<PreparedBatch>, BatchBuildError>;

    /// A change cannot become a request (it is dead-lettered next).
    fn unbuildable(&self, index: usize, error: &BuildError);

    /// Sends one request with its retries: how it ended, or the lane's halt. `base`: the run
    /// position of the changes `batch.members` counts from.
    async fn send(&self, batch: &PreparedBatch, base: usize) -> Result<Sent, Halt>;

    /// Records how one change ended.
    async fn finish(
        &self,
        index: usize,
        outcome: Outcome,
        attempts: &Attempts,
        idempotency_key: Option<String>,
    ) -> Result<(), Halt>;
}

/// Delivers `changes`, the run's changes from position `base` on, in order.
pub(super) async fn deliver_changes<T: RunTarget>(
    target: &T,
    changes: &[DecodedChange<'_>],
    base: usize,
) -> Result<(), Halt> {
    let batches = match target.build(changes) {
        Ok(batches) => batches,
        Err(error) => {
            // Deliver the ones before the unbuildable change, dead-letter it, go on after it.
            let index = error.index;
            target.unbuildable(base + index, &error.source);
            Box::pin(deliver_changes(target, &changes[..index], base)).await?;
            let refused = Outcome::DeadLetter {
                reason: REASON_REQUEST_BUILD_FAILED,
                status: None,
                excerpt: None,
            };
            target
                .finish(base + index, refused, &Attempts::default(), None)
                .await?;
            return Box::pin(deliver_changes(
                target,
                &changes[index + 1..],
                base + index + 1,
            ))
            .await;
        }
    };
    for batch in batches {
        deliver_batch(target, changes, base, batch).await?;
    }
    Ok(())
}

/// Sends one request and records its members' outcomes; bisects a batch refused with a 400.
async fn deliver_batch<T: RunTarget>(
    target: &T,
    changes: &[DecodedChange<'_>],
    base: usize,
    batch: PreparedBatch,
) -> Result<(), Halt> {
    let (outcome, attempts) = match target.send(&batch, base).await? {
        Sent::Done(outcome, attempts) => (outcome, attempts),
        Sent::PartlyLanded { landed, attempts } => {
            return deliver_the_rest(target, changes, base, &batch, &landed, &attempts).await;
        }
    };
    let members = batch.members.clone();
    if is_refused_as_a_whole(&outcome) && members.len() > 1 {
        // Bisect: find the offending change(s); only those are dead-lettered.
        let middle = members.start + members.len() / 2;
        // Each half goes the way a whole run goes: should one of its changes not become a
        // request now, it is dead-lettered and the rest of the half delivered — every offset
        // settles.
        for half in [members.start..middle, middle..members.end] {
            Box::pin(deliver_changes(
                target,
                &changes[half.clone()],
                base + half.start,
            ))
            .await?;
        }
        return Ok(());
    }
    for (position, index) in members.enumerate() {
        let key = batch.member_keys.get(position).cloned();
        // A halt (an outcome that cannot be recorded) stops here: the members after it stay
        // undone and are delivered again — with the same Idempotency-Keys — after a restart.
        target
            .finish(base + index, outcome.clone(), &attempts, key)
            .await?;
    }
    Ok(())
}

/// A request some of whose members took effect before an ambiguous failure: those are
/// recorded as delivered, each contiguous run of the others is delivered again (rebuilt into
/// new requests). The members are distinct keys (a request never holds one twice), so their
/// order among each other does not matter.
async fn deliver_the_rest<T: RunTarget>(
    target: &T,
    changes: &[DecodedChange<'_>],
    base: usize,
    batch: &PreparedBatch,
    landed: &[bool],
    attempts: &Attempts,
) -> Result<(), Halt> {
    let members = batch.members.clone();
    let mut run_start = None;
    for (position, index) in members.clone().enumerate() {
        if landed.get(position).copied().unwrap_or(false) {
            if let Some(start) = run_start.take() {
                Box::pin(deliver_changes(
                    target,
                    &changes[start..index],
                    base + start,
                ))
                .await?;
            }
            let confirmed = Outcome::CONFIRMED;
            let key = batch.member_keys.get(position).cloned();
            target
                .finish(base + index, confirmed, attempts, key)
                .await?;
        } else if run_start.is_none() {
            run_start = Some(index);
        }
    }
    if let Some(start) = run_start {
        Box::pin(deliver_changes(
            target,
            &changes[start..members.end],
            base + start,
        ))
        .await?;
    }
    Ok(())
}

/// A 400 for a request of several changes: the API names no culprit, so bisect.
fn is_refused_as_a_whole(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::DeadLetter {
            reason: REASON_HTTP_4XX,
            status: Some(400),
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use reqwest::header::HeaderMap;
    use reqwest::{Method, Url};
    use snapfeed_runtime::records::{ChangeEvent, ChangeOp};

    use super::*;
    use crate::request::tests::change;
    use crate::request::PreparedRequest;

    /// A scripted profile and API: a run is one request (as CommCare batches it); a request
    /// carrying a `refused` key is answered 400; a `fragile` key becomes a request the first
    /// time only (a change whose request cannot be built when the half it is in is rebuilt);
    /// a `broken` key never becomes one.
    #[derive(Default)]
    struct Script {
        refused: Vec<&'static str>,
        fragile: Vec<&'static str>,
        broken: Vec<&'static str>,
        /// Whether recording this key's outcome halts the lane.
        stalls_at: Option<&'static str>,
        /// The first request times out, and the lookup finds these keys saved.
        landed_first: Vec<&'static str>,
        keys: Vec<String>,
        builds: RefCell<BTreeMap<String, usize>>,
        sent: RefCell<Vec<Vec<String>>>,
        finished: RefCell<Vec<(String, Outcome)>>,
    }

    impl Script {
        fn events(&self) -> Vec<ChangeEvent> {
            self.keys
                .iter()
                .map(|key| change(ChangeOp::Delete, key, 1))
                .collect()
        }

        fn outcomes(&self) -> BTreeMap<String, Vec<Outcome>> {
            let mut by_key: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
            for (key, outcome) in self.finished.borrow().iter() {
                by_key.entry(key.clone()).or_default().push(outcome.clone());
            }
            by_key
        }
    }

    fn delivered() -> Outcome {
        Outcome::Delivered {
            status: 200,
            response_id: None,
        }
    }

    fn dead_letter(reason: &'static str, status: Option<u16>) -> Outcome {
        Outcome::DeadLetter {
            reason,
            status,
            excerpt: status.map(|_| "refused".into()),
        }
    }

    impl RunTarget for Script {
        fn build(
            &self,
            changes: &[DecodedChange<'_>],
        ) -> Result<Vec<PreparedBatch>, BatchBuildError> {
            for (index, change) in changes.iter().enumerate() {
                let key = change.event.key.as_str();
                let mut builds = self.builds.borrow_mut();
                let count = builds.entry(key.to_string()).or_insert(0);
                *count += 1;
                if self.broken.contains(&key) || (self.fragile.contains(&key) && *count > 1) {
                    return Err(BatchBuildError {
                        index,
                        source: BuildError::MissingRecord { op: "UPDATE" },
                    });
                }
            }
            if changes.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = changes.iter().map(|c| c.event.key.clone()).collect();
            Ok(vec![PreparedBatch {
                request: PreparedRequest {
                    method: Method::POST,
                    url: Url::parse("http://api.invalid/cases").unwrap(),
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                    idempotency_key: keys.join(","),
                },
                members: 0..changes.len(),
                member_keys: keys,
            }])
        }

        fn unbuildable(&self, _index: usize, _error: &BuildError) {}

        async fn send(&self, batch: &PreparedBatch, _base: usize) -> Result<Sent, Halt> {
            let keys = batch.member_keys.clone();
            let refused = keys.iter().any(|k| self.refused.contains(&k.as_str()));
            let first = self.sent.borrow().is_empty();
            self.sent.borrow_mut().push(keys.clone());
            if first && !self.landed_first.is_empty() {
                let landed = keys
                    .iter()
                    .map(|k| self.landed_first.contains(&k.as_str()))
                    .collect();
                return Ok(Sent::PartlyLanded {
                    landed,
                    attempts: Attempts::default(),
                });
            }
            let outcome = if refused {
                dead_letter(REASON_HTTP_4XX, Some(400))
            } else {
                delivered()
            };
            Ok(Sent::Done(outcome, Attempts::default()))
        }

        async fn finish(
            &self,
            index: usize,
            outcome: Outcome,
            _attempts: &Attempts,
            _idempotency_key: Option<String>,
        ) -> Result<(), Halt> {
            let key = self.keys[index].clone();
            let stalls = self.stalls_at == Some(key.as_str());
            self.finished.borrow_mut().push((key, outcome));
            if stalls {
                Err(Halt::Stalled)
            } else {
                Ok(())
            }
        }
    }

    async fn deliver(script: &Script) -> Result<(), Halt> {
        let events = script.events();
        let changes: Vec<DecodedChange<'_>> = events
            .iter()
            .map(|event| DecodedChange {
                event,
                record: None,
            })
            .collect();
        deliver_changes(script, &changes, 0).await
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| k.to_string()).collect()
    }

    #[tokio::test]
    async fn after_an_ambiguous_failure_only_the_cases_that_did_not_land_are_sent_again() {
        let script = Script {
            landed_first: vec!["B", "C", "E"],
            keys: keys(&["A", "B", "C", "D", "E", "F"]),
            ..Script::default()
        };
        assert_eq!(deliver(&script).await, Ok(()));
        let outcomes = script.outcomes();
        assert_eq!(outcomes.len(), 6, "every change settles: {outcomes:?}");
        assert!(outcomes.values().all(|seen| seen == &[delivered()]));
        assert_eq!(
            *script.sent.borrow(),
            [
                keys(&["A", "B", "C", "D", "E", "F"]),
                keys(&["A"]),
                keys(&["D"]),
                keys(&["F"])
            ],
            "only the cases the lookup did not find are sent again"
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_bisected_down_to_the_refused_change() {
        let script = Script {
            refused: vec!["E"],
            keys: keys(&["A", "B", "C", "D", "E", "F", "G", "H"]),
            ..Script::default()
        };
        assert_eq!(deliver(&script).await, Ok(()));
        let outcomes = script.outcomes();
        assert_eq!(outcomes.len(), 8, "every change settles: {outcomes:?}");
        for (key, seen) in &outcomes {
            let expected = if key == "E" {
                dead_letter(REASON_HTTP_4XX, Some(400))
            } else {
                delivered()
            };
            assert_eq!(seen, &[expected], "{key}");
        }
        let refused: Vec<Vec<String>> = script
            .sent
            .borrow()
            .iter()
            .filter(|keys| keys.contains(&"E".to_string()))
            .cloned()
            .collect();
        assert_eq!(
            refused,
            [
                keys(&["A", "B", "C", "D", "E", "F", "G", "H"]),
                keys(&["E", "F", "G", "H"]),
                keys(&["E", "F"]),
                keys(&["E"])
            ],
            "halving: one refused request per level"
        );
    }

    #[tokio::test]
    async fn an_unbuildable_change_is_dead_lettered_and_the_others_delivered_around_it() {
        let script = Script {
            broken: vec!["B"],
            keys: keys(&["A", "B", "C"]),
            ..Script::default()
        };
        assert_eq!(deliver(&script).await, Ok(()));
        let finished = script.finished.borrow().clone();
        assert_eq!(
            finished,
            [
                ("A".to_string(), delivered()),
                (
                    "B".to_string(),
                    dead_letter(REASON_REQUEST_BUILD_FAILED, None)
                ),
                ("C".to_string(), delivered()),
            ],
            "in order"
        );
    }

    /// The review's finding: a half of a refused batch that fails to build was abandoned, so
    /// its offsets never settled and the partition's commits stalled until a restart.
    #[tokio::test]
    async fn a_half_that_fails_to_build_during_bisection_still_settles_every_change() {
        let script = Script {
            refused: vec!["G"],
            fragile: vec!["C"],
            keys: keys(&["A", "B", "C", "D", "E", "F", "G", "H"]),
            ..Script::default()
        };
        assert_eq!(deliver(&script).await, Ok(()), "nothing abandons the run");
        let outcomes = script.outcomes();
        let expected: BTreeMap<String, Vec<Outcome>> = [
            ("A", delivered()),
            ("B", delivered()),
            ("C", dead_letter(REASON_REQUEST_BUILD_FAILED, None)),
            ("D", delivered()),
            ("E", delivered()),
            ("F", delivered()),
            ("G", dead_letter(REASON_HTTP_4XX, Some(400))),
            ("H", delivered()),
        ]
        .into_iter()
        .map(|(key, outcome)| (key.to_string(), vec![outcome]))
        .collect();
        assert_eq!(outcomes, expected, "each change settles exactly once");
    }

    #[tokio::test]
    async fn a_halt_while_recording_leaves_the_rest_of_the_run_undone() {
        let script = Script {
            broken: vec!["B"],
            stalls_at: Some("B"),
            keys: keys(&["A", "B", "C"]),
            ..Script::default()
        };
        assert_eq!(deliver(&script).await, Err(Halt::Stalled));
        let finished: Vec<String> = script
            .finished
            .borrow()
            .iter()
            .map(|(key, _)| key.clone())
            .collect();
        assert_eq!(finished, ["A", "B"], "nothing after the halt");
        assert!(
            script
                .sent
                .borrow()
                .iter()
                .all(|keys| !keys.contains(&"C".to_string())),
            "C is not sent"
        );
    }
}
