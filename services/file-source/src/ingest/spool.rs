//! What the validation pass decided, kept for the send pass: each accepted row's line, key and
//! Avro payload, each rejected row's line, reason and raw cells, in file order — so the send
//! pass sends exactly what was validated without reading, parsing and converting the file a
//! second time (on a 500k-row file that second pass was about a third of the ingest's CPU).
//!
//! Bounded by `source.spool_max_bytes`: keys and payloads go back to back into blocks that grow
//! with the file up to 4 MiB each (no copying as the spool grows, no allocation per accepted
//! row, a small file holds a small block), and a file whose
//! decided rows take more than the bound drops its spool, to be read again by the send pass the
//! way it was before the spool existed. No Kafka and no guarantee here: the validation pass
//! still decides the whole file before anything is sent.

use crate::convert::RowReject;

/// The first block of keys and payloads; each next one is as large as all before it …
const FIRST_BLOCK_BYTES: usize = 64 << 10;
/// … up to this (a larger row gets a block of its own size).
const MAX_BLOCK_BYTES: usize = 4 << 20;

/// The decided rows of one file, in file order.
#[derive(Debug)]
pub(super) struct Spool {
    /// Keys and payloads, back to back; a row never straddles two blocks.
    blocks: Vec<Vec<u8>>,
    rows: Vec<SpooledRow>,
    rejects: Vec<SpooledReject>,
    /// Bytes held so far (blocks' capacity, row index, rejects).
    held: usize,
    /// Capacity of the blocks so far.
    block_bytes: usize,
    limit: usize,
}

/// One row of the index: where its bytes are, or which reject it is.
#[derive(Debug, Clone, Copy)]
struct SpooledRow {
    line: u64,
    /// Block of an accepted row; `u32::MAX` for a rejected one (`at` is then its reject's index).
    block: u32,
    at: u32,
    key_len: u32,
    payload_len: u32,
}

#[derive(Debug)]
struct SpooledReject {
    reject: RowReject,
    raw: csv::ByteRecord,
}

/// A row taken back out of the spool.
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
        reject: &'s RowReject,
        raw: &'s csv::ByteRecord,
    },
}

const REJECTED: u32 = u32::MAX;

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

    /// Keeps an accepted row; false (and nothing kept) when it would pass the bound.
    pub(super) fn accept(&mut self, line: u64, key: &[u8], payload: &[u8]) -> bool {
        let len = key.len() + payload.len();
        let (Ok(key_len), Ok(payload_len)) =
            (u32::try_from(key.len()), u32::try_from(payload.len()))
        else {
            return false;
        };
        let fits_last = self
            .blocks
            .last()
            .is_some_and(|block| block.capacity() - block.len() >= len);
        if !fits_last {
            let capacity = self
                .block_bytes
                .clamp(FIRST_BLOCK_BYTES, MAX_BLOCK_BYTES)
                .max(len);
            if !self.reserve(capacity) {
                return false;
            }
            self.block_bytes += capacity;
            self.blocks.push(Vec::with_capacity(capacity));
        }
        if !self.reserve(std::mem::size_of::<SpooledRow>()) {
            return false;
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

    /// Keeps a rejected row (its raw cells go to `rejects`); false when it would pass the bound.
    pub(super) fn reject(&mut self, line: u64, reject: RowReject, raw: &csv::ByteRecord) -> bool {
        let size = std::mem::size_of::<SpooledRow>()
            + std::mem::size_of::<SpooledReject>()
            + raw.as_slice().len()
            + raw.len() * 16
            + reject.detail.len()
            + reject.column.as_ref().map_or(0, String::len);
        if !self.reserve(size) {
            return false;
        }
        self.rows.push(SpooledRow {
            line,
            block: REJECTED,
            at: self.rejects.len() as u32,
            key_len: 0,
            payload_len: 0,
        });
        self.rejects.push(SpooledReject {
            reject,
            raw: raw.clone(),
        });
        true
    }

    fn reserve(&mut self, bytes: usize) -> bool {
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

    /// Bytes held.
    pub(super) fn held_bytes(&self) -> usize {
        self.held
    }

    /// The rows in file order.
    pub(super) fn iter(&self) -> impl Iterator<Item = Spooled<'_>> + '_ {
        self.rows.iter().map(move |row| {
            if row.block == REJECTED {
                let kept = &self.rejects[row.at as usize];
                return Spooled::Rejected {
                    line: row.line,
                    reject: &kept.reject,
                    raw: &kept.raw,
                };
            }
            let block = &self.blocks[row.block as usize];
            let start = row.at as usize;
            let key_end = start + row.key_len as usize;
            Spooled::Accepted {
                line: row.line,
                key: &block[start..key_end],
                payload: &block[key_end..key_end + row.payload_len as usize],
            }
        })
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

    fn collect(spool: &Spool) -> Vec<String> {
        spool
            .iter()
            .map(|row| match row {
                Spooled::Accepted { line, key, payload } => format!(
                    "{line} {} {}",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(payload)
                ),
                Spooled::Rejected { line, reject, raw } => {
                    format!("{line} {} {}", reject.detail, raw.len())
                }
            })
            .collect()
    }

    #[test]
    fn rows_come_back_in_file_order_with_their_lines() {
        let mut spool = Spool::new(64 << 20);
        assert!(spool.accept(2, b"k1", b"payload-1"));
        assert!(spool.reject(3, reject("bad"), &csv::ByteRecord::from(vec!["a", "b"])));
        assert!(spool.accept(5, b"k2", b""));
        assert_eq!(spool.len(), 3);
        assert_eq!(collect(&spool), ["2 k1 payload-1", "3 bad 2", "5 k2 "]);
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
        for round in 0..40u64 {
            for (i, size) in sizes.iter().enumerate() {
                let line = round * 10 + i as u64;
                let key = format!("key-{line}");
                let payload = vec![(line % 251) as u8; *size];
                assert!(spool.accept(line, key.as_bytes(), &payload));
                expected.push((line, key.into_bytes(), payload));
            }
        }
        let got: Vec<(u64, Vec<u8>, Vec<u8>)> = spool
            .iter()
            .map(|row| match row {
                Spooled::Accepted { line, key, payload } => (line, key.to_vec(), payload.to_vec()),
                Spooled::Rejected { .. } => unreachable!("no rejects spooled"),
            })
            .collect();
        assert!(got == expected, "a row came back changed or out of order");
        assert_eq!(spool.blocks[0].capacity(), FIRST_BLOCK_BYTES);
        assert!(spool
            .blocks
            .iter()
            .all(|block| block.capacity() <= MAX_BLOCK_BYTES + 7 + 20));
        let held_by_blocks: usize = spool.blocks.iter().map(Vec::capacity).sum();
        assert!(spool.held_bytes() >= held_by_blocks);
    }

    #[test]
    fn past_the_bound_nothing_more_is_kept() {
        let mut spool = Spool::new(FIRST_BLOCK_BYTES as u64 + 1024);
        assert!(spool.accept(1, b"k", b"v"));
        assert!(spool.held_bytes() > FIRST_BLOCK_BYTES);
        // The first block has room for this one, but not a second block for the next.
        assert!(spool.accept(2, b"k", &[b'v'; 1000]));
        assert!(!spool.accept(3, b"k", &vec![b'v'; FIRST_BLOCK_BYTES]));
        assert_eq!(spool.len(), 2);
        let mut none = Spool::new(0);
        assert!(!none.accept(1, b"k", b"v"));
        assert!(!none.reject(1, reject("x"), &csv::ByteRecord::new()));
        assert_eq!(none.len(), 0);
    }
}
