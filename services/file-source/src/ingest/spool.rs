//! What the validation pass decided, kept for the send pass: each accepted row's line, key and
//! Avro payload, each rejected row's line, reason and raw text, in file order — so the send
//! pass sends exactly what was validated without reading, parsing and converting the file a
//! second time.
//!
//! Bounded by `source.spool_max_bytes`, counting what is allocated, not what is used: keys and
//! payloads go back to back into blocks that grow with the file up to 4 MiB each (a block is
//! never moved or grown, a small file holds a small block, no allocation per accepted row); the
//! row index grows by doubling and is counted at its new capacity before it grows; a reject
//! keeps only its `rejects` text, already cut to `raw_line_max_bytes`. A file whose decided rows
//! would pass the bound drops its spool and is read again by the send pass. Sending consumes
//! the spool, freeing each block once its rows are handed over. No Kafka and no guarantee
//! here: the validation pass still decides the whole file before anything is sent.

use crate::convert::RowReject;

/// The first block of keys and payloads; each next one is as large as all before it …
const FIRST_BLOCK_BYTES: usize = 64 << 10;
/// … up to this (a larger row gets a block of its own size).
const MAX_BLOCK_BYTES: usize = 4 << 20;
/// The row index's first allocation, in rows.
const FIRST_INDEX_ROWS: usize = 1024;

/// The decided rows of one file, in file order. Its `Debug` shows sizes only: the rows are
/// health records.
pub(super) struct Spool {
    /// Keys and payloads, back to back; a row never straddles two blocks.
    blocks: Vec<Vec<u8>>,
    rows: Vec<SpooledRow>,
    rejects: Vec<SpooledReject>,
    /// Bytes allocated so far (blocks, row index, rejects), as counted against `limit`.
    held: usize,
    /// Capacity of the blocks so far.
    block_bytes: usize,
    limit: usize,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("rows", &self.rows.len())
            .field("rejects", &self.rejects.len())
            .field("held", &self.held)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// One row of the index: where its bytes are, or which reject it is.
#[derive(Debug, Clone, Copy)]
struct SpooledRow {
    line: u64,
    /// Block of an accepted row; `REJECTED` for a rejected one (`at` is then its reject's
    /// index).
    block: u32,
    at: u32,
    key_len: u32,
    payload_len: u32,
}

const REJECTED: u32 = u32::MAX;

struct SpooledReject {
    reject: RowReject,
    /// The row's text for `rejects` and whether it was cut.
    raw_line: (String, bool),
}

/// A decided row on its way to be sent: from the spool ([`SpoolRows::next_row`]), or decided
/// again by the send pass of a file read twice.
pub(super) enum Spooled<'s> {
    /// To `snapshots`.
    Accepted {
        line: u64,
        key: &'s [u8],
        payload: &'s [u8],
    },
    /// To `rejects`.
    Rejected {
        line: u64,
        reject: RowReject,
        raw_line: (String, bool),
    },
}

impl Spool {
    /// An empty spool that holds at most `limit` bytes.
    pub(super) fn new(limit: u64) -> Spool {
        Spool {
            blocks: Vec::new(),
            rows: Vec::new(),
            rejects: Vec::new(),
            held: 0,
            block_bytes: 0,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }
    }

    /// Keeps an accepted row. False when it would pass the bound: the spool is then
    /// incomplete and must be dropped.
    pub(super) fn accept(&mut self, line: u64, key: &[u8], payload: &[u8]) -> bool {
        let len = key.len() + payload.len();
        let (Ok(key_len), Ok(payload_len)) =
            (u32::try_from(key.len()), u32::try_from(payload.len()))
        else {
            return false;
        };
        if !self.index_room() {
            return false;
        }
        let fits_last = self
            .blocks
            .last()
            .is_some_and(|block| block.capacity() - block.len() >= len);
        if !fits_last {
            let capacity = self
                .block_bytes
                .clamp(FIRST_BLOCK_BYTES, MAX_BLOCK_BYTES)
                .max(len);
            // Offsets within a block are u32.
            if u32::try_from(capacity).is_err() || !self.count(capacity) {
                return false;
            }
            self.block_bytes += capacity;
            self.blocks.push(Vec::with_capacity(capacity));
        }
        let block_index = self.blocks.len() - 1;
        let Some(block) = self.blocks.last_mut() else {
            return false;
        };
        let at = block.len() as u32;
        block.extend_from_slice(key);
        block.extend_from_slice(payload);
        self.rows.push(SpooledRow {
            line,
            block: block_index as u32,
            at,
            key_len,
            payload_len,
        });
        true
    }

    /// Keeps a rejected row with its `rejects` text (`raw_line`: text, truncated). False when
    /// it would pass the bound: the spool is then incomplete and must be dropped.
    pub(super) fn reject(
        &mut self,
        line: u64,
        reject: RowReject,
        raw_line: (String, bool),
    ) -> bool {
        if !self.index_room() {
            return false;
        }
        if self.rejects.len() == self.rejects.capacity() {
            let more = self.rejects.capacity().max(64);
            if !self.count(more * std::mem::size_of::<SpooledReject>()) {
                return false;
            }
            self.rejects.reserve_exact(more);
        }
        let text = raw_line.0.capacity()
            + reject.detail.capacity()
            + reject.column.as_ref().map_or(0, String::capacity);
        if !self.count(text) {
            return false;
        }
        self.rows.push(SpooledRow {
            line,
            block: REJECTED,
            at: self.rejects.len() as u32,
            key_len: 0,
            payload_len: 0,
        });
        self.rejects.push(SpooledReject { reject, raw_line });
        true
    }

    /// Room in the row index for one more row, its growth counted before it happens.
    fn index_room(&mut self) -> bool {
        if self.rows.len() < self.rows.capacity() {
            return true;
        }
        let more = self.rows.capacity().max(FIRST_INDEX_ROWS);
        if !self.count(more * std::mem::size_of::<SpooledRow>()) {
            return false;
        }
        self.rows.reserve_exact(more);
        true
    }

    fn count(&mut self, bytes: usize) -> bool {
        match self.held.checked_add(bytes) {
            Some(held) if held <= self.limit => {
                self.held = held;
                true
            }
            _ => false,
        }
    }

    /// Rows kept.
    pub(super) fn len(&self) -> u64 {
        self.rows.len() as u64
    }

    /// Bytes allocated, as counted against the bound.
    pub(super) fn held_bytes(&self) -> usize {
        self.held
    }

    /// The rows for sending, in file order: each block is freed once its last row has been
    /// handed over.
    pub(super) fn into_rows(mut self) -> SpoolRows {
        let rows = std::mem::take(&mut self.rows).into_iter();
        let rejects = std::mem::take(&mut self.rejects).into_iter();
        SpoolRows {
            blocks: std::mem::take(&mut self.blocks),
            rows,
            rejects,
            current: 0,
        }
    }
}

/// A spool being sent (see [`Spool::into_rows`]).
pub(super) struct SpoolRows {
    blocks: Vec<Vec<u8>>,
    rows: std::vec::IntoIter<SpooledRow>,
    rejects: std::vec::IntoIter<SpooledReject>,
    /// The first block not yet freed.
    current: usize,
}

impl SpoolRows {
    /// The next row, valid until the next call; `None` after the last.
    pub(super) fn next_row(&mut self) -> Option<Spooled<'_>> {
        let row = self.rows.next()?;
        if row.block == REJECTED {
            let kept = self.rejects.next()?;
            return Some(Spooled::Rejected {
                line: row.line,
                reject: kept.reject,
                raw_line: kept.raw_line,
            });
        }
        let index = row.block as usize;
        while self.current < index {
            // Blocks fill in order: every row of this one has been handed over.
            self.blocks[self.current] = Vec::new();
            self.current += 1;
        }
        let block = &self.blocks[index];
        let start = row.at as usize;
        let key_end = start + row.key_len as usize;
        Some(Spooled::Accepted {
            line: row.line,
            key: &block[start..key_end],
            payload: &block[key_end..key_end + row.payload_len as usize],
        })
    }

    /// Bytes still held by blocks.
    #[cfg(test)]
    fn block_bytes_held(&self) -> usize {
        self.blocks.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(detail: &str) -> RowReject {
        RowReject {
            column: Some("Result_Date".into()),
            reason: "bad_date",
            detail: detail.into(),
        }
    }

    /// Every row as `(line, key or reject detail, payload or raw text)`.
    fn drain(spool: Spool) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
        let mut rows = Vec::new();
        let mut sending = spool.into_rows();
        while let Some(row) = sending.next_row() {
            rows.push(match row {
                Spooled::Accepted { line, key, payload } => (line, key.to_vec(), payload.to_vec()),
                Spooled::Rejected {
                    line,
                    reject,
                    raw_line,
                } => (line, reject.detail.into_bytes(), raw_line.0.into_bytes()),
            });
        }
        rows
    }

    #[test]
    fn rows_come_back_in_file_order_with_their_lines() {
        let mut spool = Spool::new(64 << 20);
        assert!(spool.accept(2, b"k1", b"payload-1"));
        assert!(spool.reject(3, reject("bad"), ("a,b".into(), false)));
        assert!(spool.accept(5, b"k2", b""));
        assert_eq!(spool.len(), 3);
        let text = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            drain(spool),
            [
                (2, text("k1"), text("payload-1")),
                (3, text("bad"), text("a,b")),
                (5, text("k2"), text(""))
            ]
        );
    }

    #[test]
    fn rows_of_every_size_come_back_whole_and_blocks_grow_to_their_cap() {
        let mut spool = Spool::new(u64::MAX);
        let sizes = [
            0,
            1,
            700,
            FIRST_BLOCK_BYTES - 3,
            5,
            MAX_BLOCK_BYTES + 7,
            300,
        ];
        let mut expected = Vec::new();
        for round in 0..3u64 {
            for (i, size) in sizes.iter().enumerate() {
                let line = round * 10 + i as u64;
                let key = format!("key-{line}");
                let payload = vec![(line % 251) as u8; *size];
                assert!(spool.accept(line, key.as_bytes(), &payload));
                expected.push((line, key.into_bytes(), payload));
            }
        }
        let capacities: Vec<usize> = spool.blocks.iter().map(Vec::capacity).collect();
        assert_eq!(capacities[0], FIRST_BLOCK_BYTES);
        assert!(capacities.contains(&MAX_BLOCK_BYTES), "{capacities:?}");
        assert!(capacities.iter().all(|c| *c <= MAX_BLOCK_BYTES + 7 + 20));
        assert!(spool.held_bytes() >= capacities.iter().sum::<usize>());
        assert!(
            drain(spool) == expected,
            "a row came back changed or out of order"
        );
    }

    #[test]
    fn sent_blocks_are_freed_while_sending() {
        let mut spool = Spool::new(u64::MAX);
        for line in 0..3u64 {
            assert!(spool.accept(line, b"k", &vec![b'x'; MAX_BLOCK_BYTES]));
        }
        let mut sending = spool.into_rows();
        let mut held = Vec::new();
        while let Some(row) = sending.next_row() {
            assert!(
                matches!(row, Spooled::Accepted { payload, .. } if payload.len() == MAX_BLOCK_BYTES)
            );
            held.push(sending.block_bytes_held());
        }
        // One row per block: when the last row is handed over only its block is left.
        assert_eq!(held.len(), 3);
        assert!(held[0] > held[1] && held[1] > held[2], "{held:?}");
        assert!(held[2] <= MAX_BLOCK_BYTES + 1 + 20, "{held:?}");
    }

    #[test]
    fn past_the_bound_nothing_more_is_kept() {
        let index = FIRST_INDEX_ROWS * std::mem::size_of::<SpooledRow>();
        let mut spool = Spool::new((FIRST_BLOCK_BYTES + index + 1024) as u64);
        assert!(spool.accept(1, b"k", b"v"));
        assert_eq!(spool.held_bytes(), FIRST_BLOCK_BYTES + index);
        // The first block has room for this one, but not a second block for the next.
        assert!(spool.accept(2, b"k", &[b'v'; 1000]));
        assert!(!spool.accept(3, b"k", &vec![b'v'; FIRST_BLOCK_BYTES]));
        assert_eq!(spool.len(), 2);
        let mut none = Spool::new(0);
        assert!(!none.accept(1, b"k", b"v"));
        assert!(!none.reject(1, reject("x"), (String::new(), false)));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn the_row_index_and_rejects_are_counted_at_their_capacity() {
        let mut spool = Spool::new(u64::MAX);
        for line in 0..(FIRST_INDEX_ROWS as u64 + 1) {
            assert!(spool.reject(line, reject("bad"), ("raw".into(), false)));
        }
        let index = spool.rows.capacity() * std::mem::size_of::<SpooledRow>();
        let rejects = spool.rejects.capacity() * std::mem::size_of::<SpooledReject>();
        assert!(spool.rows.capacity() >= 2 * FIRST_INDEX_ROWS);
        assert!(spool.held_bytes() >= index + rejects);
    }

    #[test]
    fn debug_shows_sizes_not_rows() {
        let mut spool = Spool::new(u64::MAX);
        assert!(spool.accept(1, b"PATIENT-KEY", b"SECRET-PAYLOAD"));
        assert!(spool.reject(2, reject("x"), ("SECRET-RAW".into(), false)));
        let shown = format!("{spool:?}");
        assert!(shown.contains("rows: 2"), "{shown}");
        for secret in ["PATIENT-KEY", "SECRET", "80, 65"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
