//! The transaction steps — begin, commit with the consumed offsets, abort, close — and the
//! at_least_once meaning of the same calls. This is the only code in snapfeed that calls
//! `begin_transaction`, `send_offsets_to_transaction`, `commit_transaction` or
//! `abort_transaction`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use super::delivery::await_acknowledged;
use super::error::step;
use super::{Consumed, GuaranteedWriter, WriteError};
use crate::kafka::commit_offsets;

/// Attempts at a transaction step whose outcome librdkafka reports as retriable.
const TRANSACTION_ATTEMPTS: u32 = 5;
/// First wait between two such attempts (doubling).
const TRANSACTION_RETRY_WAIT: Duration = Duration::from_millis(100);

impl GuaranteedWriter {
    /// Makes everything sent so far durable together with `consumed` (if any): in
    /// `exactly_once` one transaction commit (offsets included, KIP-447); in `at_least_once`
    /// every record acknowledged, then the offsets committed. On `Err` call
    /// [`abort`](GuaranteedWriter::abort) and redo the work from the last commit. Blocking.
    pub fn commit<C: ConsumerContext + 'static>(
        &self,
        consumed: Option<Consumed<'_, C>>,
    ) -> Result<(), WriteError> {
        let consumed = consumed.filter(|c| c.offsets.count() > 0);
        self.settle_pending_abort()?;
        if !self.guarantee.is_transactional() {
            self.acknowledge()?;
            if let Some(consumed) = consumed {
                commit_offsets(consumed.consumer, consumed.offsets, CommitMode::Sync)?;
            }
            return Ok(());
        }
        if let Some(consumed) = consumed {
            self.begin()?;
            let metadata = consumed.consumer.group_metadata().ok_or(WriteError::Step {
                step: "read the consumer's group metadata",
                source: KafkaError::NoMessageReceived,
            })?;
            let producer = self.current();
            self.transaction_step("send offsets to the transaction", || {
                producer.send_offsets_to_transaction(consumed.offsets, &metadata, self.timeout)
            })?;
        }
        if !self.in_transaction.load(Ordering::Relaxed) {
            return Ok(());
        }
        let producer = self.current();
        // Commit right after the last acknowledgement instead of in rust-rdkafka's flush, whose
        // 100 ms poll runs to its end (see `await_acknowledged`).
        await_acknowledged(&producer, self.timeout);
        self.transaction_step("commit the transaction", || {
            producer.commit_transaction(self.timeout)
        })?;
        self.in_transaction.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// [`commit`](GuaranteedWriter::commit) for a stage that consumes nothing (file-source):
    /// everything sent so far made durable. Blocking.
    pub fn commit_sent(&self) -> Result<(), WriteError> {
        self.commit::<rdkafka::consumer::DefaultConsumerContext>(None)
    }

    /// Throws away what was sent since the last commit: aborts the open transaction
    /// (`exactly_once`), or forgets the failed acknowledgements (`at_least_once`). A producer
    /// that cannot abort, or that librdkafka declares fatal, is replaced. An abort whose outcome
    /// is not known yet (the coordinator does not answer) is left pending: nothing is sent or
    /// committed until a later `abort` (called by the next send or commit) gets through —
    /// and the producer is not replaced for it, since a successor may hold the id by then.
    /// Blocking.
    pub fn abort(&self) -> Result<(), WriteError> {
        self.failures.swap(0, Ordering::Relaxed);
        if !self.in_transaction.load(Ordering::Relaxed) {
            self.abort_pending.store(false, Ordering::Relaxed);
            return self.replace_if_fatal();
        }
        let producer = self.current();
        let mut wait = TRANSACTION_RETRY_WAIT;
        let mut attempts = 0;
        let failure = loop {
            attempts += 1;
            match producer.abort_transaction(self.timeout) {
                Ok(()) => {
                    self.in_transaction.store(false, Ordering::Relaxed);
                    self.abort_pending.store(false, Ordering::Relaxed);
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(message = "Could not abort the open transaction.", %error);
                    if self.is_fenced(&error) {
                        return Err(self.fenced(error));
                    }
                    let retriable =
                        matches!(&error, KafkaError::Transaction(e) if e.is_retriable());
                    if !retriable {
                        break error;
                    }
                    if attempts >= TRANSACTION_ATTEMPTS {
                        self.abort_pending.store(true, Ordering::Relaxed);
                        return Err(WriteError::Step {
                            step: "abort the transaction",
                            source: error,
                        });
                    }
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        };
        // Neither committed nor aborted, and librdkafka says it never will be: a new producer
        // with the same transactional id aborts what this one left open.
        self.abort_pending.store(false, Ordering::Relaxed);
        self.replace(failure)
    }

    /// Finishes an abort left pending by an earlier `abort`, before anything else is sent or
    /// committed.
    fn settle_pending_abort(&self) -> Result<(), WriteError> {
        if self.abort_pending.load(Ordering::Relaxed) {
            self.abort()?;
        }
        Ok(())
    }

    /// At shutdown: aborts a transaction still open (a stage commits what it finished before
    /// closing) and flushes what is queued, within `bound`. Blocking.
    pub fn close(&self, bound: Duration) -> Result<(), WriteError> {
        if self.in_transaction.load(Ordering::Relaxed) {
            self.abort()?;
        }
        self.current().flush(bound).map_err(step("flush"))
    }

    pub(super) fn begin(&self) -> Result<(), WriteError> {
        self.settle_pending_abort()?;
        if self.guarantee.is_transactional() && !self.in_transaction.load(Ordering::Relaxed) {
            if let Err(error) = self.current().begin_transaction() {
                return Err(if self.is_fenced(&error) {
                    self.fenced(error)
                } else {
                    WriteError::Step {
                        step: "begin a transaction",
                        source: error,
                    }
                });
            }
            self.in_transaction.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Runs a transaction step, retrying while librdkafka says its outcome is not known yet.
    pub(super) fn transaction_step(
        &self,
        name: &'static str,
        call: impl Fn() -> Result<(), KafkaError>,
    ) -> Result<(), WriteError> {
        let (mut attempt, mut wait) = (1, TRANSACTION_RETRY_WAIT);
        loop {
            match call() {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(error))
                    if error.is_retriable() && attempt < TRANSACTION_ATTEMPTS =>
                {
                    tracing::warn!(message = "Transaction step not confirmed yet; retrying.", step = name, %error);
                    std::thread::sleep(wait);
                    attempt += 1;
                    wait *= 2;
                }
                Err(error) if self.is_fenced(&error) => return Err(self.fenced(error)),
                Err(error) => {
                    return Err(WriteError::Step {
                        step: name,
                        source: error,
                    })
                }
            }
        }
    }
}
