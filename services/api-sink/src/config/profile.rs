//! The request profiles' settings: `sink.profile` names one, and its section
//! (`[sink.json]`, `[sink.commcare_case_v2]` or `[sink.template]`) holds its settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snapfeed_runtime::config::ConfigError;

/// Which request profile builds the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// POST the change envelope as JSON to `api_url` + `[sink.json] path`.
    Json,
    /// CommCare Case API v2 bulk upsert by `external_id`.
    CommcareCaseV2,
    /// Method, URL, headers and JSON body from a template file.
    Template,
}

impl Profile {
    /// The profile's name in the config, which is also its section's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Json => "json",
            Profile::CommcareCaseV2 => "commcare_case_v2",
            Profile::Template => "template",
        }
    }
}

/// `[sink.json]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonProfileConfig {
    /// Path appended to `api_url`, starting with `/`.
    pub path: String,
}

/// `[sink.commcare_case_v2]`: one case per change, upserted by `external_id` = record key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommCareProfileConfig {
    /// Project space: requests go to `/a/<domain>/api/case/v2/`.
    pub domain: String,
    /// `case_type` of every case.
    pub case_type: String,
    /// `owner_id` of every case (a mobile worker, group or location id).
    pub owner_id: String,
    /// Dataset fields whose values, joined by a space, form the `case_name`.
    pub case_name_fields: Vec<String>,
    /// Case property → dataset field; sent as strings.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Cases per request; CommCare refuses more than 100.
    #[serde(default = "default_batch_max_cases")]
    pub batch_max_cases: usize,
    /// After an ambiguous failure (a timeout, a connection reset after the request went out),
    /// ask CommCare for the cases (`bulk-fetch`) and send again only those it does not already
    /// hold as sent: CommCare has no idempotency key, so every re-send is another form.
    #[serde(default = "default_confirm_before_resend")]
    pub confirm_before_resend: bool,
}

fn default_batch_max_cases() -> usize {
    100
}
fn default_confirm_before_resend() -> bool {
    true
}

/// CommCare's limit on cases per bulk request (a larger payload is a 400, nothing saved).
pub const COMMCARE_MAX_CASES_PER_REQUEST: usize = 100;

/// `[sink.template]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateProfileConfig {
    /// A MiniJinja template rendering a JSON object `{method, url, headers, body}`; see
    /// [`crate::request`] for the context it gets.
    pub template_file: PathBuf,
}

impl CommCareProfileConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let key = |name: &str| format!("sink.commcare_case_v2.{name}");
        let domain_ok = !self.domain.is_empty()
            && self
                .domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !domain_ok {
            return Err(ConfigError::invalid(
                key("domain"),
                format!("{:?}", self.domain),
                "a project space name (letters, digits, `-`, `_`, `.`)",
            ));
        }
        for (name, value) in [("case_type", &self.case_type), ("owner_id", &self.owner_id)] {
            if value.trim().is_empty() || value.chars().count() > 255 {
                return Err(ConfigError::invalid(
                    key(name),
                    format!("{value:?}"),
                    "1 to 255 characters (CommCare's limit)",
                ));
            }
        }
        if self.case_name_fields.is_empty() {
            return Err(ConfigError::invalid(
                key("case_name_fields"),
                "[]",
                "at least one dataset field",
            ));
        }
        for property in self.properties.keys() {
            if !is_case_property_name(property) {
                return Err(ConfigError::invalid(
                    format!("{}.{property}", key("properties")),
                    format!("{property:?}"),
                    "a valid XML element name (letter or `_` first, then letters, digits, `_`, \
                     `-`, `.`; not starting with `xml`) that is not a top-level case field",
                ));
            }
        }
        if !(1..=COMMCARE_MAX_CASES_PER_REQUEST).contains(&self.batch_max_cases) {
            return Err(ConfigError::invalid(
                key("batch_max_cases"),
                self.batch_max_cases,
                format!("from 1 to {COMMCARE_MAX_CASES_PER_REQUEST} (CommCare's limit)"),
            ));
        }
        Ok(())
    }
}

/// Top-level fields of a CommCare case update; a property may not take their names.
const CASE_FIELDS: &[&str] = &[
    "case_id",
    "case_name",
    "case_type",
    "close",
    "create",
    "date_opened",
    "external_id",
    "indices",
    "owner_id",
    "properties",
    "temporary_id",
];

/// CommCare's rule for property names: a valid XML element name, not a top-level field.
fn is_case_property_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.to_ascii_lowercase().starts_with("xml")
        && !CASE_FIELDS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{error_of, load_text};

    pub(crate) const COMMCARE: &str = "[sink]\napi_url = \"https://www.commcarehq.org\"\n\
        dataset_mapping = \"m.toml\"\nprofile = \"commcare_case_v2\"\n\
        [sink.commcare_case_v2]\ndomain = \"lab-demo\"\ncase_type = \"lab_result\"\n\
        owner_id = \"abc123\"\ncase_name_fields = [\"patient_first_name\", \"patient_last_name\"]\n\
        [sink.commcare_case_v2.properties]\ndob = \"patient_dob\"\nresult = \"test_result\"\n";

    #[test]
    fn commcare_profile_loads_with_its_settings() {
        let config = load_text(COMMCARE).unwrap();
        let commcare = config.sink.commcare_case_v2.unwrap();
        assert_eq!(commcare.batch_max_cases, 100);
        assert_eq!(commcare.properties["dob"], "patient_dob");
        assert_eq!(commcare.case_name_fields.len(), 2);
    }

    #[test]
    fn commcare_rule_violations_name_their_keys() {
        let cases = [
            (
                COMMCARE.replace("lab-demo", "lab demo"),
                "sink.commcare_case_v2.domain",
            ),
            (
                COMMCARE.replace("\"abc123\"", "\"\""),
                "sink.commcare_case_v2.owner_id",
            ),
            (
                COMMCARE.replace("dob = ", "xmldob = "),
                "sink.commcare_case_v2.properties.xmldob",
            ),
            (
                COMMCARE.replace("dob = ", "case_name = "),
                "sink.commcare_case_v2.properties.case_name",
            ),
            (
                COMMCARE.replace("dob = ", "\"1dob\" = "),
                "sink.commcare_case_v2.properties.1dob",
            ),
            (
                COMMCARE.replace("owner_id = ", "batch_max_cases = 101\nowner_id = "),
                "sink.commcare_case_v2.batch_max_cases",
            ),
            (
                COMMCARE.replace("[\"patient_first_name\", \"patient_last_name\"]", "[]"),
                "sink.commcare_case_v2.case_name_fields",
            ),
        ];
        for (text, key) in cases {
            let error = error_of(&text);
            assert!(
                error.starts_with(&format!("config key `{key}`")),
                "{key}: {error}"
            );
        }
    }

    #[test]
    fn property_names_follow_commcare_rules() {
        for good in ["dob", "test_result", "_x", "a-b.c", "Result2"] {
            assert!(is_case_property_name(good), "{good}");
        }
        for bad in ["", "2x", "xml_thing", "XMLx", "a b", "owner_id", "é"] {
            assert!(!is_case_property_name(bad), "{bad}");
        }
    }
}
