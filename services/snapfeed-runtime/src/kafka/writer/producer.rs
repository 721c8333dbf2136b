//! The writer's producer: created with transactions initialised (fencing the previous
//! incarnation), replaced when librdkafka declares it fatal or it can neither commit nor abort —
//! never when it was fenced, since taking the transactional id back would fence the instance
//! that took it over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, ThreadedProducer};

use super::delivery::{Tickets, WriterContext};
use super::{GuaranteedWriter, WriteError};
use crate::kafka::ProcessingGuarantee;

/// How long the replaced producer's drop thread waits for senders to let go of it.
const OLD_PRODUCER_RELEASE: Duration = Duration::from_secs(30);

/// The producer every writer method goes through.
pub(super) type WriterProducer = ThreadedProducer<WriterContext>;

impl GuaranteedWriter {
    pub(super) fn current(&self) -> Arc<WriterProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Fenced: by the error itself, or by the producer's fatal error.
    pub(super) fn is_fenced(&self, error: &KafkaError) -> bool {
        let fenced = |code: Option<RDKafkaErrorCode>| {
            matches!(
                code,
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
            )
        };
        fenced(error.rdkafka_error_code())
            || fenced(self.current().client().fatal_error().map(|(code, _)| code))
    }

    pub(super) fn fenced(&self, source: KafkaError) -> WriteError {
        WriteError::Fenced {
            transactional_id: self.transactional_id.clone().unwrap_or_default(),
            source,
        }
    }

    /// Replaces the producer if librdkafka declared it fatal (and it was not fenced). Callers
    /// that find it fatal together replace it once: the second finds the fresh one.
    pub(super) fn replace_if_fatal(&self) -> Result<(), WriteError> {
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.current().client().fatal_error() {
            Some((code, reason)) => {
                tracing::error!(message = "The producer failed fatally.", ?code, %reason);
                self.replace(KafkaError::MessageProduction(code))
            }
            None => Ok(()),
        }
    }

    pub(super) fn replace(&self, why: KafkaError) -> Result<(), WriteError> {
        if self.is_fenced(&why) {
            return Err(self.fenced(why));
        }
        tracing::warn!(message = "Replacing the producer.", error = %why);
        let fresh = self.create()?;
        self.install(fresh);
        self.in_transaction.store(false, Ordering::Relaxed);
        self.abort_pending.store(false, Ordering::Relaxed);
        self.replaced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn create(&self) -> Result<WriterProducer, WriteError> {
        create_producer(
            &self.settings,
            self.guarantee,
            self.timeout,
            &self.failures,
            &self.tickets,
        )
    }

    pub(super) fn install(&self, producer: WriterProducer) {
        let old = std::mem::replace(
            &mut *self
                .producer
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            Arc::new(producer),
        );
        // Dropping a producer purges and flushes for up to 500 ms: never on the caller's path,
        // nor on an async worker that happens to hold the last clone (a sender mid-send) —
        // this thread waits until it holds the only one, then drops it.
        let _ = std::thread::Builder::new()
            .name("producer-drop".into())
            .spawn(move || {
                let mut old = old;
                let deadline = std::time::Instant::now() + OLD_PRODUCER_RELEASE;
                loop {
                    match Arc::try_unwrap(old) {
                        Ok(producer) => return drop(producer),
                        Err(shared) if std::time::Instant::now() < deadline => {
                            old = shared;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        // Still held after the bound: whoever holds it drops it.
                        Err(shared) => return drop(shared),
                    }
                }
            });
    }
}

/// A producer reporting into the writer's delivery bookkeeping; in `exactly_once` with
/// transactions initialised, which fences an earlier producer with the same id and aborts the
/// transaction it left open.
pub(super) fn create_producer(
    settings: &ClientConfig,
    guarantee: ProcessingGuarantee,
    timeout: Duration,
    failures: &Arc<AtomicU64>,
    tickets: &Arc<Tickets>,
) -> Result<WriterProducer, WriteError> {
    let producer: WriterProducer = settings
        .create_with_context(WriterContext {
            failures: Arc::clone(failures),
            tickets: Arc::clone(tickets),
        })
        .map_err(|source| WriteError::Unrecoverable { source })?;
    if guarantee.is_transactional() {
        producer.init_transactions(timeout).map_err(|source| {
            let retriable = matches!(&source, KafkaError::Transaction(e) if e.is_retriable())
                || source.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut);
            if retriable {
                // The coordinator did not answer (in time): worth another try later.
                WriteError::Step {
                    step: "initialise transactions",
                    source,
                }
            } else {
                WriteError::Unrecoverable { source }
            }
        })?;
    }
    Ok(producer)
}
