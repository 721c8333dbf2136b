//! The `Idempotency-Key` every request carries: lower-case hex of
//! SHA-256 over `"snapfeed-idempotency-v1"`, then the pipeline name and the record key, each as
//! its UTF-8 length (u64, big-endian) followed by its bytes, then the version (i64,
//! big-endian). Length prefixes make the encoding unambiguous (no separator a key could
//! contain). A change re-sent after a crash or replay carries the same key, so the API can
//! de-duplicate it. A request carrying several changes (a CommCare batch) uses the hash of
//! its members' keys, see [`batch_idempotency_key`]; a batch of one uses its member's key.
//!
//! Guarantee: the key depends only on pipeline, record key and version — the same change gets
//! the same key on every attempt, after a crash, a replay or a redrive — so the effect at the
//! API is once, whatever the sink repeats. The encoding is a contract with APIs that stored
//! earlier keys: it never changes (a new one would get a new `-v2` prefix).

use sha2::{Digest, Sha256};

/// The Idempotency-Key of one change (see the module documentation for the encoding).
pub fn idempotency_key(pipeline: &str, key: &str, version: i64) -> String {
    let mut hash = Sha256::new();
    hash.update(b"snapfeed-idempotency-v1");
    for part in [pipeline, key] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(version.to_be_bytes());
    snapfeed_runtime::avro::hex(&hash.finalize())
}

/// The Idempotency-Key of a request carrying several changes: SHA-256 over
/// `"snapfeed-batch-v1"`, the member count (u64, big-endian), then each member's own key,
/// sorted, length-prefixed like [`idempotency_key`]. Members' keys already cover pipeline,
/// key and version, so the same set of changes always gets the same batch key. One member:
/// its own key, so a batch bisected down to one change is that change's request.
pub fn batch_idempotency_key(member_keys: &[String]) -> String {
    if let [only] = member_keys {
        return only.clone();
    }
    let mut sorted: Vec<&str> = member_keys.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash = Sha256::new();
    hash.update(b"snapfeed-batch-v1");
    hash.update((sorted.len() as u64).to_be_bytes());
    for key in sorted {
        hash.update((key.len() as u64).to_be_bytes());
        hash.update(key.as_bytes());
    }
    snapfeed_runtime::avro::hex(&hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_key_is_stable_and_distinct() {
        let key = idempotency_key("lab-results", "K1", 3);
        assert_eq!(key, idempotency_key("lab-results", "K1", 3));
        assert_eq!(key.len(), 64);
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let others = [
            idempotency_key("lab-results", "K1", 4),
            idempotency_key("lab-results", "K2", 3),
            idempotency_key("other", "K1", 3),
            // Length prefixes: moving a boundary between pipeline and key changes the key.
            idempotency_key("lab-resultsK", "1", 3),
            idempotency_key("lab-results", "K1", -3),
        ];
        for other in &others {
            assert_ne!(&key, other);
        }
        // Pinned: the encoding is a contract with APIs that stored earlier keys.
        assert_eq!(
            key,
            idempotency_key("lab-results", "K1", 3),
            "deterministic across calls"
        );
        let mut sha = Sha256::new();
        sha.update(b"snapfeed-idempotency-v1");
        sha.update(11u64.to_be_bytes());
        sha.update(b"lab-results");
        sha.update(2u64.to_be_bytes());
        sha.update(b"K1");
        sha.update(3i64.to_be_bytes());
        assert_eq!(key, snapfeed_runtime::avro::hex(&sha.finalize()));
    }

    #[test]
    fn a_batch_key_ignores_member_order() {
        let a = idempotency_key("p", "A", 1);
        let b = idempotency_key("p", "B", 1);
        let ab = batch_idempotency_key(&[a.clone(), b.clone()]);
        assert_eq!(ab, batch_idempotency_key(&[b.clone(), a.clone()]));
        assert_ne!(ab, a);
        assert_eq!(batch_idempotency_key(std::slice::from_ref(&a)), a);
        let b2 = idempotency_key("p", "B", 2);
        assert_ne!(
            ab,
            batch_idempotency_key(&[a, b2]),
            "a new version is a new batch"
        );
    }
}
