//! The record key: one string per record, built from the configured key fields, identical for
//! the same record in every file, and never equal for two different records.
//!
//! Canonical form: each component is trimmed, its case rule applied (`upper`, `lower` or
//! `preserve`), then escaped — `\` becomes `\\` and `|` becomes `\|` — and the components are
//! joined with `|`, in the configured order. Escaping makes the form injective (distinct tuples
//! never produce the same key) and reversible ([`RecordKey::components`]). Empty components are
//! refused: a key field is required.
//!
//! Example: `("05d2222542", "ACC|7", "94500-6")` with case rules (upper, preserve, preserve)
//! → `05D2222542|ACC\|7|94500-6`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Separator between components.
pub const SEPARATOR: char = '|';
/// Escape character.
pub const ESCAPE: char = '\\';

/// How a key component's case is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyCase {
    /// As in the file.
    #[default]
    Preserve,
    /// Upper-cased (e.g. CLIA numbers, which labs write either way).
    Upper,
    /// Lower-cased.
    Lower,
}

/// A canonical record key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(String);

/// Why a key could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A component is empty after trimming.
    #[error("key field #{index} is empty")]
    EmptyComponent {
        /// 0-based position among the key fields.
        index: usize,
    },
    /// Wrong number of components for the rules.
    #[error("expected {expected} key fields, got {got}")]
    Arity {
        /// Configured.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// A canonical string that does not parse (dangling escape).
    #[error("malformed canonical key (dangling escape at byte {at})")]
    Malformed {
        /// Byte offset.
        at: usize,
    },
}

impl RecordKey {
    /// Builds the key from raw component values and their case rules (same length).
    pub fn build<'a>(
        values: impl IntoIterator<Item = &'a str>,
        cases: &[KeyCase],
    ) -> Result<RecordKey, KeyError> {
        let mut out = String::with_capacity(48);
        let mut count = 0;
        for (index, raw) in values.into_iter().enumerate() {
            let case = *cases.get(index).ok_or(KeyError::Arity {
                expected: cases.len(),
                got: index + 1,
            })?;
            let value = raw.trim();
            if value.is_empty() {
                return Err(KeyError::EmptyComponent { index });
            }
            if index > 0 {
                out.push(SEPARATOR);
            }
            push_escaped(&mut out, value, case);
            count = index + 1;
        }
        if count != cases.len() {
            return Err(KeyError::Arity {
                expected: cases.len(),
                got: count,
            });
        }
        Ok(RecordKey(out))
    }

    /// Wraps a string already in canonical form (e.g. a Kafka message key), checking it parses.
    pub fn from_canonical(canonical: &str) -> Result<RecordKey, KeyError> {
        split_canonical(canonical)?;
        Ok(RecordKey(canonical.to_string()))
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, unescaped (after normalisation).
    pub fn components(&self) -> Vec<String> {
        // Built or checked at construction, so splitting cannot fail.
        split_canonical(&self.0).unwrap_or_default()
    }

    /// Consumes the key into its canonical string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn push_escaped(out: &mut String, value: &str, case: KeyCase) {
    // Keys are nearly always ASCII: byte-wise case mapping is then the same as Unicode's, and
    // a value without separator or escape is copied as one run.
    if value.is_ascii() {
        let (separator, escape) = (SEPARATOR as u8, ESCAPE as u8);
        if memchr::memchr2(separator, escape, value.as_bytes()).is_none() {
            let start = out.len();
            out.push_str(value);
            match case {
                KeyCase::Preserve => {}
                KeyCase::Upper => out[start..].make_ascii_uppercase(),
                KeyCase::Lower => out[start..].make_ascii_lowercase(),
            }
            return;
        }
        out.reserve(value.len());
        for &byte in value.as_bytes() {
            let byte = match case {
                KeyCase::Preserve => byte,
                KeyCase::Upper => byte.to_ascii_uppercase(),
                KeyCase::Lower => byte.to_ascii_lowercase(),
            };
            if byte == separator || byte == escape {
                out.push(ESCAPE);
            }
            out.push(byte as char);
        }
        return;
    }
    push_escaped_chars(out, value, case);
}

/// [`push_escaped`] for any text, char by char with Unicode case mapping.
fn push_escaped_chars(out: &mut String, value: &str, case: KeyCase) {
    for c in value.chars() {
        let mapped: &mut dyn Iterator<Item = char> = match case {
            KeyCase::Preserve => &mut std::iter::once(c),
            KeyCase::Upper => &mut c.to_uppercase(),
            KeyCase::Lower => &mut c.to_lowercase(),
        };
        for c in mapped {
            if c == SEPARATOR || c == ESCAPE {
                out.push(ESCAPE);
            }
            out.push(c);
        }
    }
}

fn split_canonical(canonical: &str) -> Result<Vec<String>, KeyError> {
    let mut parts = vec![String::new()];
    let mut chars = canonical.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            ESCAPE => match chars.next() {
                Some((_, escaped)) => parts.last_mut().map(|p| p.push(escaped)).unwrap_or(()),
                None => return Err(KeyError::Malformed { at }),
            },
            SEPARATOR => parts.push(String::new()),
            other => parts.last_mut().map(|p| p.push(other)).unwrap_or(()),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CASES: [KeyCase; 3] = [KeyCase::Upper, KeyCase::Preserve, KeyCase::Preserve];

    #[test]
    fn documented_example() {
        let key = RecordKey::build(["05d2222542", " ACC|7 ", "94500-6"], &CASES).unwrap();
        assert_eq!(key.as_str(), "05D2222542|ACC\\|7|94500-6");
        assert_eq!(key.components(), ["05D2222542", "ACC|7", "94500-6"]);
    }

    #[test]
    fn empty_component_and_wrong_arity_are_refused() {
        assert_eq!(
            RecordKey::build(["a", "  ", "c"], &CASES),
            Err(KeyError::EmptyComponent { index: 1 })
        );
        assert_eq!(
            RecordKey::build(["a", "b"], &CASES),
            Err(KeyError::Arity {
                expected: 3,
                got: 2
            })
        );
        assert!(RecordKey::from_canonical("a|b\\").is_err());
    }

    fn component() -> impl Strategy<Value = String> {
        // Heavy on the characters that matter: separators, escapes, spaces, non-ASCII.
        proptest::string::string_regex("[a-zA-Z0-9|\\\\ éÜ-]{0,8}")
            .unwrap()
            .prop_filter("non-empty after trim", |s| !s.trim().is_empty())
    }

    proptest! {
        #[test]
        fn the_ascii_fast_path_escapes_and_maps_case_as_unicode_does(value in "[a-zA-Z0-9|\\\\ é-]{0,12}") {
            for case in [KeyCase::Preserve, KeyCase::Upper, KeyCase::Lower] {
                let (mut fast, mut chars) = (String::new(), String::new());
                push_escaped(&mut fast, &value, case);
                push_escaped_chars(&mut chars, &value, case);
                prop_assert_eq!(fast, chars);
            }
        }

        #[test]
        fn distinct_tuples_never_collide(a in proptest::collection::vec(component(), 3), b in proptest::collection::vec(component(), 3)) {
            let cases = [KeyCase::Preserve; 3];
            let ka = RecordKey::build(a.iter().map(String::as_str), &cases).unwrap();
            let kb = RecordKey::build(b.iter().map(String::as_str), &cases).unwrap();
            let na: Vec<&str> = a.iter().map(|s| s.trim()).collect();
            let nb: Vec<&str> = b.iter().map(|s| s.trim()).collect();
            prop_assert_eq!(na == nb, ka == kb);
        }

        #[test]
        fn canonical_form_round_trips(parts in proptest::collection::vec(component(), 1..5)) {
            let cases = vec![KeyCase::Preserve; parts.len()];
            let key = RecordKey::build(parts.iter().map(String::as_str), &cases).unwrap();
            let trimmed: Vec<String> = parts.iter().map(|s| s.trim().to_string()).collect();
            prop_assert_eq!(key.components(), trimmed);
            prop_assert_eq!(RecordKey::from_canonical(key.as_str()).unwrap(), key);
        }

        #[test]
        fn case_rules_make_case_variants_equal(parts in proptest::collection::vec(component(), 3)) {
            let upper: Vec<String> = parts.iter().map(|s| s.to_uppercase()).collect();
            let lower: Vec<String> = parts.iter().map(|s| s.to_lowercase()).collect();
            let cases = [KeyCase::Upper; 3];
            prop_assert_eq!(
                RecordKey::build(upper.iter().map(String::as_str), &cases).unwrap(),
                RecordKey::build(lower.iter().map(String::as_str), &cases).unwrap()
            );
        }
    }
}
