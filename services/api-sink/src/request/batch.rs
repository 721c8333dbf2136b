//! Grouping a lane's run of changes into requests: only `commcare_case_v2` carries several
//! changes per request (its bulk endpoint); every other profile sends one request per change.
//!
//! Guarantee: per-key order survives batching — a run is cut into contiguous requests, sent in
//! order, and never holds two versions of one key (the API would be free to apply them in
//! either order). A change that cannot become a request is named by its position
//! ([`BatchBuildError::index`]), so the caller can dead-letter exactly that one.

use std::ops::Range;

use reqwest::Method;

use super::{
    batch_idempotency_key, field_error, idempotency_key, json_request, BatchBuildError,
    DecodedChange, PreparedBatch, ProfileBuilder, RequestBuilder,
};

impl RequestBuilder {
    /// Requests for a run of changes (in partition order), as few as the profile allows.
    ///
    /// Only `commcare_case_v2` groups: consecutive changes share a request until it holds
    /// `batch_max_cases`, or until a key comes again — two versions of one case in one
    /// request would leave their order to the server, so the later one starts the next
    /// request. Requests must be sent in the order returned. Other profiles give one request
    /// per change.
    pub fn build_batch(
        &self,
        changes: &[DecodedChange<'_>],
    ) -> Result<Vec<PreparedBatch>, BatchBuildError> {
        let ProfileBuilder::CommCare(commcare) = &self.profile else {
            return changes
                .iter()
                .enumerate()
                .map(|(index, change)| {
                    let request = self
                        .build(*change)
                        .map_err(|source| BatchBuildError { index, source })?;
                    Ok(PreparedBatch {
                        member_keys: vec![request.idempotency_key.clone()],
                        request,
                        members: index..index + 1,
                    })
                })
                .collect();
        };
        let mut batches = Vec::new();
        for members in plan_batches(changes, commcare.batch_max()) {
            let mut cases = Vec::with_capacity(members.len());
            let mut member_keys = Vec::with_capacity(members.len());
            for index in members.clone() {
                let change = changes[index];
                cases.push(
                    commcare
                        .case(change)
                        .map_err(|source| BatchBuildError { index, source })?,
                );
                member_keys.push(idempotency_key(
                    &self.pipeline,
                    &change.event.key,
                    change.event.version,
                ));
            }
            let body = serde_json::to_vec(&cases).map_err(|_| BatchBuildError {
                index: members.start,
                source: field_error("record", "cannot be serialized as JSON"),
            })?;
            let key = batch_idempotency_key(&member_keys);
            batches.push(PreparedBatch {
                request: json_request(Method::POST, commcare.url().clone(), body, key),
                members,
                member_keys,
            });
        }
        Ok(batches)
    }
}

/// Contiguous runs of at most `max` changes with no key twice in a run.
fn plan_batches(changes: &[DecodedChange<'_>], max: usize) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut keys = std::collections::HashSet::new();
    for (index, change) in changes.iter().enumerate() {
        if index - start >= max.max(1) || keys.contains(change.event.key.as_str()) {
            runs.push(start..index);
            start = index;
            keys.clear();
        }
        keys.insert(change.event.key.as_str());
    }
    if start < changes.len() {
        runs.push(start..changes.len());
    }
    runs
}
