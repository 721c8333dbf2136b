//! The dataset record — one CSV row as an Avro record of the dataset schema (e.g.
//! `schemas/lab_result.avsc`) — driven by configuration, not code: a mapping file
//! (`deploy/config/*.mapping.toml`, format documented in its comments) says which CSV column
//! feeds each schema field, how dates are written, how enum values are normalised, which
//! fields form the record key and which are volatile.
//!
//! [`DatasetMapping::load`] validates the mapping against the schema once, at start, with
//! errors that name the file and the key (`field[3] (patient_dob): date field needs
//! date_formats`); the resulting [`Dataset`] is shared by every stage. A [`DatasetRecord`]
//! is the values in schema field order; it encodes straight to Avro and decodes from any
//! version of the schema kept in `schemas/history/` (reader fields the writer lacked take
//! their schema default; writer fields the reader dropped are skipped), so a schema upgrade
//! never strands data written before it. Nothing here logs or formats field values: the
//! `Debug` of a record shows field kinds only. No I/O beyond reading the mapping at start, so
//! no delivery guarantee of its own.
//!
//! The parts, in the order a mapping and then a row meet them:
//! - `mapping`: the mapping file, its checks against the schema, and the [`Dataset`] it yields.
//! - `field`: one field's Avro type joined with its `[[field]]` entry ([`FieldSpec`]), and the
//!   rules each entry must meet on its own.
//! - `record`: [`FieldValue`] and [`DatasetRecord`] — checked construction, key, encoding.
//! - `decode`: a payload from any known version of the schema, into the current layout.
//! - `change`: change events and dead letters that nest the record as a typed Avro record.
//! - `raw`: field values read straight from the Avro binary (the change-detector's hot path).

mod change;
mod decode;
mod field;
mod mapping;
mod raw;
mod record;

pub use change::{ChangeRecord, ChangeWriter};
pub use field::{FieldKind, FieldSpec};
pub use mapping::{normalise_column, Dataset, DatasetError, DatasetMapping, FieldMapping};
pub use raw::FieldRef;
pub use record::{DatasetRecord, FieldValue, RecordShapeError};

#[cfg(test)]
mod fixtures;
