//! Confirming an ambiguous send before sending it again ([`crate::request::confirm`] builds
//! the lookup and reads its answer): the lookup goes out like any request — through the
//! shared limits, with credentials — and is retried while it fails transiently.
//!
//! Guarantee: a member is only ever taken as delivered when the API shows it holding exactly
//! what was sent. When the API cannot say (the lookup refused, an answer that is not a
//! bulk-fetch answer), every member is sent again — at least once, as without confirmation.

use super::lane::Lane;
use super::{Halt, Sink};
use crate::request::PreparedBatch;
use crate::retry::{Backoff, Classification};

impl Sink {
    /// Per member of `batch`, whether it already took effect; `None` when the profile has no
    /// lookup (or it is off), or the API could not say.
    pub(super) async fn confirm(
        &self,
        lane: Lane,
        batch: &PreparedBatch,
    ) -> Result<Option<Vec<bool>>, Halt> {
        let Some(confirmation) = self.builder.confirmation(batch) else {
            return Ok(None);
        };
        let mut backoff = Backoff::new(&self.api.retry);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let permit = self.admitted(lane).await?;
            let authorization = match self.api.auth.header(&self.api.client).await {
                Ok(authorization) => authorization,
                Err(error) => {
                    tracing::warn!(
                        message = "No credentials for the confirmation lookup; retrying.",
                        reason = error.reason()
                    );
                    drop(permit);
                    self.wait_or_stop(lane, backoff.next_delay(tries, None))
                        .await?;
                    continue;
                }
            };
            self.until_host_open(lane).await?;
            let (classification, body) = self
                .attempt(&confirmation.request, authorization.clone())
                .await;
            drop(permit);
            let retry_after = match classification {
                Classification::Delivered { .. } => {
                    let landed = confirmation.landed(&body);
                    self.count_confirmation(landed.as_deref());
                    return Ok(landed);
                }
                Classification::Transient { retry_after, .. } => retry_after,
                Classification::Unauthorized { .. } => {
                    if let Some(rejected) = &authorization {
                        self.api.auth.invalidate(rejected).await;
                    }
                    None
                }
                Classification::Permanent { status, .. } => {
                    tracing::warn!(
                        message =
                            "The API refused the confirmation lookup; sending the request again.",
                        status
                    );
                    self.count_confirmation(None);
                    return Ok(None);
                }
            };
            self.wait_or_stop(lane, backoff.next_delay(tries, retry_after))
                .await?;
        }
    }

    fn count_confirmation(&self, landed: Option<&[bool]>) {
        let result = match landed {
            None => "unknown",
            Some(landed) if landed.iter().all(|l| *l) => "landed",
            Some(landed) if landed.iter().any(|l| *l) => "partly_landed",
            Some(_) => "not_landed",
        };
        self.metrics
            .confirmations
            .with_label_values(&[result])
            .inc();
        tracing::info!(message = "Ambiguous send confirmed with the API.", result);
    }
}
