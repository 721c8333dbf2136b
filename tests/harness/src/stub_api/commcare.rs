//! The stub's CommCare Case API v2, as far as the sink uses it: a bulk upsert
//! (`POST /a/<domain>/api/case/v2/`, a JSON array of case changes) that the stub applies to a
//! case store when it answers 2xx — counting one *form* per case per accepted request, since
//! CommCare records every submission in the case's history — and `bulk-fetch`
//! (`POST …/bulk-fetch/` with `{"external_ids": […]}`) answered from that store, in
//! CommCare's format (`matching_records`, `missing_records`, `cases`, a `not found` entry per
//! missing id).
//!
//! Like every effect of the stub, a bulk request is applied when its reply is chosen, before a
//! reply delay: a client that times out has still changed the cases.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{RecordedRequest, Reply};

const UPSERT_SUFFIX: &str = "/api/case/v2/";
const FETCH_SUFFIX: &str = "/api/case/v2/bulk-fetch/";

/// A bulk-fetch request.
pub(super) fn is_bulk_fetch(request: &RecordedRequest) -> bool {
    request.method == "POST" && path_of(request).ends_with(FETCH_SUFFIX)
}

/// A bulk upsert request.
pub(super) fn is_bulk_upsert(request: &RecordedRequest) -> bool {
    request.method == "POST" && path_of(request).ends_with(UPSERT_SUFFIX)
}

fn path_of(request: &RecordedRequest) -> &str {
    request.path.split('?').next().unwrap_or_default()
}

/// Cases by `external_id`, and the forms that touched each.
#[derive(Debug, Default)]
pub(super) struct CaseStore {
    cases: BTreeMap<String, Value>,
    forms: BTreeMap<String, usize>,
    next_id: u64,
}

impl CaseStore {
    /// Applies an accepted bulk request: each entry upserts (or, with `close: true`, closes)
    /// its case by `external_id`.
    pub(super) fn apply(&mut self, body: &[u8]) {
        let entries = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(entries)) => entries,
            Ok(entry @ Value::Object(_)) => vec![entry],
            _ => return,
        };
        for entry in entries {
            let Some(id) = entry.get("external_id").and_then(Value::as_str) else {
                continue;
            };
            *self.forms.entry(id.to_string()).or_default() += 1;
            if !self.cases.contains_key(id) {
                self.next_id += 1;
                let case = json!({
                    "case_id": format!("case-{:08}", self.next_id),
                    "external_id": id,
                    "closed": false,
                    "properties": {},
                });
                self.cases.insert(id.to_string(), case);
            }
            let Some(Value::Object(case)) = self.cases.get_mut(id) else {
                continue;
            };
            for field in ["case_type", "case_name", "owner_id"] {
                if let Some(value) = entry.get(field) {
                    case.insert(field.into(), value.clone());
                }
            }
            if let Some(Value::Object(properties)) = entry.get("properties") {
                let held = case
                    .entry("properties")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(held) = held {
                    for (name, value) in properties {
                        held.insert(name.clone(), value.clone());
                    }
                }
            }
            let close = entry.get("close").and_then(Value::as_bool).unwrap_or(false);
            case.insert("closed".into(), Value::Bool(close));
        }
    }

    /// The bulk-fetch answer for `body`.
    pub(super) fn fetch(&self, body: &[u8]) -> Reply {
        let ids: Vec<String> = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|body| body.get("external_ids")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|id| id.as_str().map(str::to_string))
            .collect();
        let cases: Vec<Value> = ids
            .iter()
            .map(|id| {
                self.cases
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| json!({"external_id": id, "error": "not found"}))
            })
            .collect();
        let missing = cases.iter().filter(|c| c.get("error").is_some()).count();
        Reply::ok().with_body(
            json!({
                "matching_records": cases.len() - missing,
                "missing_records": missing,
                "cases": cases,
            })
            .to_string(),
        )
    }

    /// How many cases exist.
    pub(super) fn count(&self) -> usize {
        self.cases.len()
    }

    /// Forms (accepted bulk entries) per `external_id`.
    pub(super) fn forms(&self) -> BTreeMap<String, usize> {
        self.forms.clone()
    }

    /// The case of `external_id`, as bulk-fetch shows it.
    pub(super) fn case(&self, external_id: &str) -> Option<Value> {
        self.cases.get(external_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_requests_upsert_and_close_cases_and_bulk_fetch_shows_them() {
        let mut store = CaseStore::default();
        store.apply(
            json!([
                {"create": null, "external_id": "A", "case_type": "t", "case_name": "N",
                 "owner_id": "o", "properties": {"result": "x", "dob": "1"}, "close": false},
                {"create": null, "external_id": "B", "case_type": "t", "case_name": "M",
                 "owner_id": "o", "properties": {"result": "y"}, "close": false},
            ])
            .to_string()
            .as_bytes(),
        );
        store.apply(
            json!([
                {"create": null, "external_id": "A", "properties": {"result": "z"}, "close": false},
                {"create": false, "external_id": "B", "close": true},
            ])
            .to_string()
            .as_bytes(),
        );
        assert_eq!(
            store.forms(),
            BTreeMap::from([("A".into(), 2), ("B".into(), 2)])
        );
        let reply = store.fetch(br#"{"external_ids": ["A", "B", "C"]}"#);
        let answer: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(answer["matching_records"], 2);
        assert_eq!(answer["missing_records"], 1);
        let cases = answer["cases"].as_array().unwrap();
        assert_eq!(cases[0]["properties"], json!({"result": "z", "dob": "1"}));
        assert_eq!(cases[0]["case_name"], "N");
        assert_eq!(cases[1]["closed"], true);
        assert_eq!(cases[2], json!({"external_id": "C", "error": "not found"}));
    }
}
