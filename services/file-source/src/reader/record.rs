//! One CSV record as [`RecordReader`](super::RecordReader) hands it out: its fields as spans
//! of one byte buffer, its position, and its text checked once. No guarantee of its own.

use csv::Position;

/// One CSV record: its fields (spans of one byte buffer) and where it starts.
#[derive(Clone)]
pub struct Record {
    pub(super) bytes: Vec<u8>,
    /// Each field's `start..end` in `bytes`.
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) position: Position,
}

impl Default for Record {
    fn default() -> Record {
        Record::new()
    }
}

/// Equal fields and position, however the fields lie in the buffer.
impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.position == other.position && self.fields().eq(other.fields())
    }
}

impl Eq for Record {}

/// Never the fields: they are health data.
impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("fields", &self.spans.len())
            .field("line", &self.position.line())
            .finish_non_exhaustive()
    }
}

impl Record {
    /// An empty record.
    pub fn new() -> Record {
        Record {
            bytes: Vec::with_capacity(1024),
            spans: Vec::with_capacity(64),
            position: Position::new(),
        }
    }

    /// A record of these fields (tests, and rows written by hand).
    pub fn from_fields<T: AsRef<[u8]>>(fields: impl IntoIterator<Item = T>) -> Record {
        let mut record = Record::new();
        for field in fields {
            record.push_field(field.as_ref());
        }
        record
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether it has no field.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The fields' raw bytes.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans.iter().map(|&(start, end)| {
            debug_assert!(
                start <= end && end <= self.bytes.len(),
                "a span in the buffer"
            );
            self.bytes.get(start..end).unwrap_or_default()
        })
    }

    /// Where the record starts, as `csv::Reader` counts it (see the module documentation).
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// The line the record starts on (1 is the header's).
    pub fn line(&self) -> u64 {
        self.position.line()
    }

    /// The fields as text, or `None` when a field is not valid UTF-8. One check of the whole
    /// buffer; fields of a line split at its (ASCII) delimiters are then valid each, and the
    /// span ends of any other record are checked to fall between characters.
    pub fn text(&self) -> Option<TextFields<'_>> {
        let text = std::str::from_utf8(&self.bytes).ok()?;
        let between_chars = text.is_ascii()
            || self
                .spans
                .iter()
                .all(|&(start, end)| text.is_char_boundary(start) && text.is_char_boundary(end));
        between_chars.then(|| TextFields {
            text,
            spans: self.spans.iter(),
        })
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    pub(super) fn push_field(&mut self, field: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(field);
        self.spans.push((start, self.bytes.len()));
    }
}

/// A record's fields as text ([`Record::text`]).
#[derive(Debug, Clone)]
pub struct TextFields<'r> {
    text: &'r str,
    spans: std::slice::Iter<'r, (usize, usize)>,
}

impl<'r> Iterator for TextFields<'r> {
    type Item = &'r str;
    fn next(&mut self) -> Option<&'r str> {
        let &(start, end) = self.spans.next()?;
        // Checked by `Record::text`: always `Some`.
        debug_assert!(
            self.text.get(start..end).is_some(),
            "a span between characters"
        );
        Some(self.text.get(start..end).unwrap_or_default())
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl ExactSizeIterator for TextFields<'_> {}
