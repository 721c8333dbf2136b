//! Which fields of a record changed between two versions — by name, and old → new only when
//! values are shown.

use apache_avro::types::Value;

use super::super::{to_json, Values};

/// Which fields differ from the version before, by name (and value, when shown).
pub(super) fn field_changes(
    before: Option<&[(String, Value)]>,
    after: &[(String, Value)],
    values: Values,
) -> String {
    let Some(before) = before else {
        let names: Vec<&str> = after.iter().map(|(name, _)| name.as_str()).collect();
        return match values {
            Values::Redacted => format!("new record, {} fields", names.len()),
            Values::Shown => format!("new record {}", to_json(Value::Record(after.to_vec()))),
        };
    };
    let old = |name: &str| {
        before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&Value::Null, |(_, v)| v)
    };
    let mut changed = Vec::new();
    let mut unchanged = 0usize;
    for (name, value) in after {
        if unwrap_union(old(name)) == unwrap_union(value) {
            unchanged += 1;
        } else {
            changed.push(match values {
                Values::Redacted => name.clone(),
                Values::Shown => format!(
                    "{name}: {} → {}",
                    to_json(old(name).clone()),
                    to_json(value.clone())
                ),
            });
        }
    }
    format!(
        "changed: {}; unchanged: {unchanged} fields",
        if changed.is_empty() {
            "none".to_string()
        } else {
            changed.join(", ")
        }
    )
}

fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(result: &str) -> Vec<(String, Value)> {
        vec![
            ("patient_id".into(), Value::String("P1".into())),
            (
                "result".into(),
                Value::Union(1, Box::new(Value::String(result.into()))),
            ),
        ]
    }

    #[test]
    fn changed_fields_are_named_and_values_only_shown_when_asked() {
        let (old, new) = (record("NEGATIVE"), record("POSITIVE"));
        let redacted = field_changes(Some(&old), &new, Values::Redacted);
        assert_eq!(redacted, "changed: result; unchanged: 1 fields");
        assert!(!redacted.contains("POSITIVE"));
        let shown = field_changes(Some(&old), &new, Values::Shown);
        assert!(shown.contains("\"NEGATIVE\" → \"POSITIVE\""), "{shown}");
        let created = field_changes(None, &new, Values::Redacted);
        assert_eq!(created, "new record, 2 fields");
        assert!(!created.contains("P1"));
    }

    #[test]
    fn a_field_the_older_version_lacked_counts_as_changed_only_if_set() {
        let old = vec![("patient_id".to_string(), Value::String("P1".into()))];
        let mut new = old.clone();
        new.push((
            "ordering_provider".to_string(),
            Value::Union(0, Box::new(Value::Null)),
        ));
        assert_eq!(
            field_changes(Some(&old), &new, Values::Redacted),
            "changed: none; unchanged: 2 fields"
        );
    }
}
