//! The `commcare_case_v2` profile: each change becomes one case in a CommCare Case API v2 bulk
//! request, `POST {api_url}/a/<domain>/api/case/v2/` with a JSON array body.
//!
//! The bulk endpoint applies an array of case changes as one form submission (all or nothing,
//! at most 100 per request, success is 200 with `{"form_id", "cases"}`). Every entry must
//! carry a `create` key: `true` creates, `false` updates an existing case (selected by
//! `case_id` or `external_id`), and `null` upserts by `external_id` (sources: CommCare HQ's
//! `docs/api/cases-v2.rst` and its OpenAPI description `case-v2.yaml`, `CaseV2BulkChange`).
//! So:
//!
//! - CREATE and UPDATE send `create: null` — an upsert by `external_id` = record key — with
//!   `case_type`, `owner_id`, `case_name` and `properties` (all strings, as CommCare requires;
//!   a null field is sent as `""`, which CommCare treats as unset, so a value that went away is
//!   cleared rather than left stale), and `close: false`. An upsert makes the effect the same
//!   whether or not an earlier delivery of the key arrived, which replays rely on.
//! - DELETE sends `create: false`, `external_id` and `close: true`: it closes the existing case
//!   and changes nothing else. A DELETE has no record to name a new case from, so a DELETE for
//!   a case CommCare never had is answered 400 and dead-lettered — the right outcome, as there
//!   is nothing to close.
//!
//! `case_name` is the configured fields' texts joined by a space (nulls and blanks skipped),
//! cut to CommCare's 255 characters; when all are empty it falls back to the record key, as a
//! case must have a name. Keys over 255 characters cannot be an `external_id` and fail to build.

use reqwest::Url;
use serde_json::{Map, Value};
use snapfeed_runtime::config::ConfigError;
use snapfeed_runtime::dataset::{Dataset, DatasetRecord, FieldValue};
use snapfeed_runtime::records::ChangeOp;

use super::{field_error, parse_url, value_text, BuildError, DecodedChange};
use crate::config::{CommCareProfileConfig, SinkConfig};

/// CommCare's limit on `case_name`, `external_id`, `case_type` and `owner_id`.
const MAX_CHARS: usize = 255;

/// A prepared `commcare_case_v2` profile: the endpoint and field positions resolved.
#[derive(Debug)]
pub(super) struct CommCareProfile {
    url: Url,
    /// `…/api/case/v2/bulk-fetch/`: the cases by `external_id`, to confirm an ambiguous send.
    bulk_fetch_url: Url,
    /// `confirm_before_resend`.
    confirm: bool,
    case_type: String,
    owner_id: String,
    /// Positions of the `case_name_fields` in the dataset record.
    case_name_fields: Vec<usize>,
    /// Case property → position of its dataset field.
    properties: Vec<(String, usize)>,
    batch_max: usize,
}

impl CommCareProfile {
    pub(super) fn new(
        sink: &SinkConfig,
        settings: &CommCareProfileConfig,
        dataset: &Dataset,
    ) -> Result<Self, ConfigError> {
        let position = |key: String, field: &str| {
            dataset
                .field_names()
                .iter()
                .position(|name| &**name == field)
                .ok_or_else(|| {
                    ConfigError::invalid(
                        key,
                        format!("{field:?}"),
                        format!("a field of the dataset schema {}", dataset.schema_name()),
                    )
                })
        };
        let case_name_fields = settings
            .case_name_fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                position(
                    format!("sink.commcare_case_v2.case_name_fields[{i}]"),
                    field,
                )
            })
            .collect::<Result<_, _>>()?;
        let properties = settings
            .properties
            .iter()
            .map(|(property, field)| {
                let key = format!("sink.commcare_case_v2.properties.{property}");
                Ok((property.clone(), position(key, field)?))
            })
            .collect::<Result<_, ConfigError>>()?;
        let url = parse_url(
            "sink.commcare_case_v2.domain",
            &format!("{}/a/{}/api/case/v2/", sink.api_base(), settings.domain),
        )?;
        let bulk_fetch_url =
            parse_url("sink.commcare_case_v2.domain", &format!("{url}bulk-fetch/"))?;
        Ok(CommCareProfile {
            url,
            bulk_fetch_url,
            confirm: settings.confirm_before_resend,
            case_type: settings.case_type.clone(),
            owner_id: settings.owner_id.clone(),
            case_name_fields,
            properties,
            batch_max: settings.batch_max_cases,
        })
    }

    pub(super) fn url(&self) -> &Url {
        &self.url
    }

    pub(super) fn batch_max(&self) -> usize {
        self.batch_max
    }

    /// The bulk-fetch endpoint, when an ambiguous send is to be confirmed before re-sending.
    pub(super) fn confirm_url(&self) -> Option<&Url> {
        self.confirm.then_some(&self.bulk_fetch_url)
    }

    /// One entry of the bulk array.
    pub(super) fn case(&self, change: DecodedChange<'_>) -> Result<Value, BuildError> {
        let event = change.event;
        if event.key.chars().count() > MAX_CHARS {
            return Err(field_error(
                "key",
                "longer than CommCare's 255-character external_id",
            ));
        }
        let mut case = Map::new();
        if event.op == ChangeOp::Delete {
            case.insert("create".into(), Value::Bool(false));
            case.insert("external_id".into(), event.key.clone().into());
            case.insert("close".into(), Value::Bool(true));
            return Ok(Value::Object(case));
        }
        let record = change.record.ok_or(BuildError::MissingRecord {
            op: event.op.as_str(),
        })?;
        let mut properties = Map::with_capacity(self.properties.len());
        for (property, index) in &self.properties {
            let text = field_text(record, *index)?.unwrap_or_default();
            properties.insert(property.clone(), Value::String(text));
        }
        // `create: null` is the upsert-by-external_id entry of the bulk endpoint.
        case.insert("create".into(), Value::Null);
        case.insert("external_id".into(), event.key.clone().into());
        case.insert("case_type".into(), self.case_type.clone().into());
        case.insert("owner_id".into(), self.owner_id.clone().into());
        case.insert(
            "case_name".into(),
            self.case_name(record, &event.key)?.into(),
        );
        case.insert("properties".into(), Value::Object(properties));
        case.insert("close".into(), Value::Bool(false));
        Ok(Value::Object(case))
    }

    fn case_name(&self, record: &DatasetRecord, key: &str) -> Result<String, BuildError> {
        let mut parts = Vec::with_capacity(self.case_name_fields.len());
        for index in &self.case_name_fields {
            if let Some(text) = field_text(record, *index)? {
                let text = text.trim();
                if !text.is_empty() {
                    parts.push(text.to_owned());
                }
            }
        }
        let name = if parts.is_empty() {
            key.to_owned()
        } else {
            parts.join(" ")
        };
        Ok(name.chars().take(MAX_CHARS).collect())
    }
}

fn field_text(record: &DatasetRecord, index: usize) -> Result<Option<String>, BuildError> {
    let name = record.names().get(index).map_or("?", |n| &**n);
    let value = record
        .values()
        .get(index)
        .ok_or_else(|| field_error(name, "not in the record"))?;
    if let FieldValue::Null = value {
        return Ok(None);
    }
    value_text(name, value)
}

#[cfg(test)]
mod tests {
    use snapfeed_runtime::records::ChangeOp;

    use super::super::tests::{change, decoded, lab_dataset, sample_record, sink_config};
    use super::super::{RequestBuilder, SetupError};
    use super::*;

    const COMMCARE: &str = "profile = \"commcare_case_v2\"\n\
        [sink.commcare_case_v2]\ndomain = \"lab-demo\"\ncase_type = \"lab_result\"\n\
        owner_id = \"owner-1\"\ncase_name_fields = [\"patient_first_name\", \"patient_last_name\"]\n\
        batch_max_cases = 3\n\
        [sink.commcare_case_v2.properties]\ndob = \"patient_dob\"\nresult = \"test_result\"\n\
        sex = \"patient_sex\"\nreported = \"date_reported\"\n";

    fn builder(profile: &str) -> Result<RequestBuilder, SetupError> {
        let dataset = lab_dataset();
        RequestBuilder::new(&sink_config(profile), "lab-results", &dataset)
    }

    #[test]
    fn a_change_becomes_one_upsert_case() {
        let builder = builder(COMMCARE).unwrap();
        let dataset = lab_dataset();
        let record = sample_record(&dataset);
        let event = change(ChangeOp::Update, "K1", 3);
        let request = builder.build(decoded(&event, Some(&record))).unwrap();
        assert_eq!(
            request.url.as_str(),
            "https://cc.example.org/a/lab-demo/api/case/v2/"
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!([{
                "create": null,
                "external_id": "K1",
                "case_type": "lab_result",
                "owner_id": "owner-1",
                "case_name": "Núñez",
                "properties": {"dob": "1960-01-04", "result": "Detected", "sex": "M", "reported": ""},
                "close": false,
            }])
        );
    }

    #[test]
    fn delete_closes_the_existing_case_only() {
        let builder = builder(COMMCARE).unwrap();
        let event = change(ChangeOp::Delete, "K1", 4);
        let request = builder.build(decoded(&event, None)).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!([{"create": false, "external_id": "K1", "close": true}])
        );
    }

    #[test]
    fn the_case_name_falls_back_to_the_key_and_is_capped() {
        let dataset = lab_dataset();
        let builder = builder(COMMCARE).unwrap();
        let ProfileBuilderRef(commcare) = ProfileBuilderRef::of(&builder);
        let nameless = sample_record_with(&dataset, "patient_last_name", FieldValue::Null);
        assert_eq!(commcare.case_name(&nameless, "K9").unwrap(), "K9");
        let long = sample_record_with(
            &dataset,
            "patient_last_name",
            FieldValue::String("é".repeat(300)),
        );
        assert_eq!(
            commcare.case_name(&long, "K9").unwrap().chars().count(),
            255
        );
        let event = change(ChangeOp::Create, &"k".repeat(256), 1);
        let record = sample_record(&dataset);
        let error = builder.build(decoded(&event, Some(&record))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field key: longer than CommCare's 255-character external_id"
        );
    }

    #[test]
    fn a_batch_splits_on_a_repeated_key_and_respects_the_cap() {
        let builder = builder(COMMCARE).unwrap();
        let dataset = lab_dataset();
        let record = sample_record(&dataset);
        let events = [
            change(ChangeOp::Create, "A", 1),
            change(ChangeOp::Create, "B", 1),
            change(ChangeOp::Update, "A", 2),
            change(ChangeOp::Create, "C", 1),
            change(ChangeOp::Create, "D", 1),
            change(ChangeOp::Delete, "E", 5),
            change(ChangeOp::Create, "F", 1),
        ];
        let changes: Vec<_> = events
            .iter()
            .map(|e| decoded(e, (e.op != ChangeOp::Delete).then_some(&record)))
            .collect();
        let batches = builder.build_batch(&changes).unwrap();
        let ranges: Vec<_> = batches.iter().map(|b| b.members.clone()).collect();
        // A again starts a new request; then the cap of 3 closes the next one.
        assert_eq!(ranges, [0..2, 2..5, 5..7]);
        for batch in &batches {
            let body: Value = serde_json::from_slice(&batch.request.body).unwrap();
            let ids: Vec<&str> = body
                .as_array()
                .unwrap()
                .iter()
                .map(|case| case["external_id"].as_str().unwrap())
                .collect();
            let expected: Vec<&str> = batch
                .members
                .clone()
                .map(|i| events[i].key.as_str())
                .collect();
            assert_eq!(ids, expected);
            assert_eq!(batch.member_keys.len(), batch.members.len());
            assert_eq!(
                batch.request.headers[crate::request::IDEMPOTENCY_KEY],
                batch.request.idempotency_key.as_str()
            );
        }
        let last: Value = serde_json::from_slice(&batches[2].request.body).unwrap();
        assert_eq!(last[0]["close"], true, "DELETE closes");
        assert_eq!(last[1]["close"], false);
    }

    #[test]
    fn a_batch_key_is_stable_and_bisection_ends_at_the_change_key() {
        let builder = builder(COMMCARE).unwrap();
        let dataset = lab_dataset();
        let record = sample_record(&dataset);
        let events = [
            change(ChangeOp::Create, "A", 1),
            change(ChangeOp::Create, "B", 1),
        ];
        let changes: Vec<_> = events.iter().map(|e| decoded(e, Some(&record))).collect();
        let pair = builder.build_batch(&changes).unwrap();
        let again = builder.build_batch(&changes).unwrap();
        assert_eq!(
            pair[0].request.idempotency_key,
            again[0].request.idempotency_key
        );
        assert_eq!(
            pair[0].request.body, again[0].request.body,
            "same bytes on resend"
        );
        let single = builder.build_batch(&changes[1..]).unwrap();
        assert_eq!(
            single[0].request.idempotency_key,
            builder.build(changes[1]).unwrap().idempotency_key
        );
        assert_ne!(
            single[0].request.idempotency_key,
            pair[0].request.idempotency_key
        );
    }

    #[test]
    fn a_change_that_cannot_be_built_is_named_by_its_position() {
        let builder = builder(COMMCARE).unwrap();
        let events = [
            change(ChangeOp::Create, "A", 1),
            change(ChangeOp::Update, "B", 2),
        ];
        let dataset = lab_dataset();
        let record = sample_record(&dataset);
        let changes = [
            decoded(&events[0], Some(&record)),
            decoded(&events[1], None),
        ];
        let error = builder.build_batch(&changes).unwrap_err();
        assert_eq!(error.index, 1);
        assert_eq!(error.source, BuildError::MissingRecord { op: "UPDATE" });
    }

    #[test]
    fn unknown_dataset_fields_fail_at_start_naming_the_key() {
        let error = builder(&COMMCARE.replace("\"test_result\"", "\"test_reslt\""))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("config key `sink.commcare_case_v2.properties.result`"),
            "{error}"
        );
        assert!(error.contains("snapfeed.lab.LabResult"), "{error}");
        let error = builder(&COMMCARE.replace("\"patient_first_name\"", "\"first\""))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sink.commcare_case_v2.case_name_fields[0]"),
            "{error}"
        );
    }

    /// Reaches the CommCare profile inside a builder.
    struct ProfileBuilderRef<'a>(&'a CommCareProfile);

    impl<'a> ProfileBuilderRef<'a> {
        fn of(builder: &'a RequestBuilder) -> Self {
            match &builder.profile {
                super::super::ProfileBuilder::CommCare(commcare) => ProfileBuilderRef(commcare),
                _ => panic!("not the commcare profile"),
            }
        }
    }

    fn sample_record_with(dataset: &Dataset, field: &str, value: FieldValue) -> DatasetRecord {
        let record = sample_record(dataset);
        let mut values = record.into_values();
        let index = dataset
            .field_names()
            .iter()
            .position(|n| &**n == field)
            .unwrap();
        values[index] = value;
        dataset.record(values).unwrap()
    }
}
