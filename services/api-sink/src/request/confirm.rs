//! Confirming an ambiguous send before sending again — for an API without idempotency keys
//! (CommCare): after a timeout or a connection lost once the request was out, the cases may
//! or may not have been saved, and a re-send of saved ones is another form in each case's
//! history. So the sink first asks (`POST …/api/case/v2/bulk-fetch/` with the batch's
//! `external_ids`) and sends again only the cases CommCare does not already hold as sent.
//!
//! "Holds as sent": a case of a close entry is closed; a case of an upsert is open and has
//! the `case_type`, `case_name`, `owner_id` and every property the entry sets (a property
//! sent as `""` — unset — may be absent). Pure: the lookup is built from the request as sent,
//! and the answer compared with it; the lane does the I/O (`deliver::attempt`).
//!
//! Limit: a request still being processed when the lookup is answered is not seen yet, and is
//! sent again — the lookup waits the retry backoff first to make that unlikely.

use std::collections::HashMap;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{Map, Value};

use super::{PreparedBatch, PreparedRequest, ProfileBuilder, RequestBuilder};

/// The lookup confirming one request, and what the request set.
#[derive(Debug, Clone)]
pub struct Confirmation {
    /// The lookup (changes nothing; carries no Idempotency-Key).
    pub request: PreparedRequest,
    /// The request's cases, in member order.
    sent: Vec<Value>,
}

impl RequestBuilder {
    /// True when the profile has a lookup and `confirm_before_resend` is on.
    pub fn confirms(&self) -> bool {
        matches!(&self.profile, ProfileBuilder::CommCare(commcare) if commcare.confirm_url().is_some())
    }

    /// The lookup that tells which of `batch`'s changes already took effect — when the profile
    /// has one and `confirm_before_resend` is on.
    pub fn confirmation(&self, batch: &PreparedBatch) -> Option<Confirmation> {
        let ProfileBuilder::CommCare(commcare) = &self.profile else {
            return None;
        };
        let url = commcare.confirm_url()?;
        let sent: Vec<Value> = serde_json::from_slice(&batch.request.body).ok()?;
        let ids: Vec<&str> = sent
            .iter()
            .filter_map(|case| case.get("external_id")?.as_str())
            .collect();
        if ids.len() != sent.len() || sent.len() != batch.members.len() {
            return None;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "external_ids": ids })).ok()?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        Some(Confirmation {
            request: PreparedRequest {
                method: Method::POST,
                url: url.clone(),
                headers,
                body: Bytes::from(body),
                idempotency_key: String::new(),
            },
            sent,
        })
    }
}

impl Confirmation {
    /// Per member of the request: whether CommCare already holds it as sent. `None` when
    /// `answer` is not a bulk-fetch answer.
    pub fn landed(&self, answer: &[u8]) -> Option<Vec<bool>> {
        let answer: Value = serde_json::from_slice(answer).ok()?;
        let cases = answer.get("cases")?.as_array()?;
        let found: HashMap<&str, &Value> = cases
            .iter()
            .filter(|case| case.get("error").is_none())
            .filter_map(|case| Some((case.get("external_id")?.as_str()?, case)))
            .collect();
        Some(
            self.sent
                .iter()
                .map(|sent| {
                    sent.get("external_id")
                        .and_then(Value::as_str)
                        .and_then(|id| found.get(id))
                        .is_some_and(|case| holds(case, sent))
                })
                .collect(),
        )
    }
}

/// Whether `case` (as CommCare serializes it) already has what the bulk entry `sent` sets.
fn holds(case: &Value, sent: &Value) -> bool {
    let closed = case.get("closed").and_then(Value::as_bool).unwrap_or(false);
    if sent.get("close").and_then(Value::as_bool) == Some(true) {
        return closed;
    }
    if closed {
        return false;
    }
    for field in ["case_type", "case_name", "owner_id"] {
        if let Some(value) = sent.get(field) {
            if case.get(field) != Some(value) {
                return false;
            }
        }
    }
    let none = Map::new();
    let has = case
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&none);
    let sets = sent
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&none);
    sets.iter().all(|(name, value)| {
        let held = has.get(name).and_then(Value::as_str).unwrap_or("");
        value.as_str() == Some(held)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn confirmation(sent: Value) -> Confirmation {
        Confirmation {
            request: PreparedRequest {
                method: Method::POST,
                url: "https://cc.example.org/a/d/api/case/v2/bulk-fetch/"
                    .parse()
                    .unwrap(),
                headers: HeaderMap::new(),
                body: Bytes::new(),
                idempotency_key: String::new(),
            },
            sent: sent.as_array().unwrap().clone(),
        }
    }

    fn upsert(id: &str, result: &str) -> Value {
        json!({"create": null, "external_id": id, "case_type": "lab_result", "owner_id": "o1",
               "case_name": "N", "properties": {"result": result, "dob": ""}, "close": false})
    }

    fn case(id: &str, result: &str, closed: bool) -> Value {
        json!({"case_id": format!("c-{id}"), "external_id": id, "case_type": "lab_result",
               "owner_id": "o1", "case_name": "N", "closed": closed,
               "properties": {"result": result}})
    }

    #[test]
    fn each_case_is_landed_only_when_it_holds_what_was_sent() {
        let check = confirmation(json!([
            upsert("A", "Detected"),
            upsert("B", "Detected"),
            upsert("C", "Detected"),
            {"create": false, "external_id": "D", "close": true},
            upsert("E", "Detected"),
        ]));
        let answer = json!({"matching_records": 4, "missing_records": 1, "cases": [
            case("A", "Detected", false),
            case("B", "Not detected", false),
            {"external_id": "C", "error": "not found"},
            case("D", "x", true),
            case("E", "Detected", true),
        ]});
        let landed = check.landed(answer.to_string().as_bytes()).unwrap();
        // A as sent (an unset property may be absent); B holds an older result; C is missing;
        // D is closed as asked; E was closed since, which an upsert would reopen.
        assert_eq!(landed, [true, false, false, true, false]);
        assert_eq!(check.landed(b"<html>busy</html>"), None);
        assert_eq!(check.landed(b"{\"detail\": 1}"), None);
    }
}
