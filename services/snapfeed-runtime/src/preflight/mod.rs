//! `check-config --connect`: everything a service needs before it can work, checked now and
//! printed one line per check — so a deployment fails at the preflight, with the reason named,
//! not at 3 a.m. on the first file.
//!
//! Common to every service ([`common_checks`]):
//! - the schemas load (every historical version readable by the current one);
//! - every secret reference in the config resolves (an `{ env = … }` or `{ file = … }` value,
//!   wherever it is) — the value is never printed;
//! - the broker answers (one bounded metadata call, no retrying);
//! - with `[schema_registry]`, the registry answers an authenticated request (`GET /subjects`,
//!   one bounded call);
//! - every topic of the pipeline exists, `snapshots`/`state`/`changes` are co-partitioned;
//! - `state` and `files` are compacted and each topic's `retention.ms` is what `[topics]`
//!   configures (read with DescribeConfigs).
//!
//! Each service adds its own ([`ServiceChecks`]): the dataset mapping, request templates, the
//! API reached and an OAuth2 token fetched, the inbox directories.
//!
//! Exit 0 only when every check passes; otherwise 1, naming each failed check.

use std::fmt;
use std::future::Future;
use std::path::Path;

use crate::avro::SchemaStore;
use crate::config::SecretRef;
use crate::dataset::{Dataset, DatasetMapping};

mod broker;
use crate::service::CommonSections;

/// One check and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`broker`, `topic lab-results.state`, `secret sink.auth.token`, …).
    pub name: String,
    /// `Ok(what was found)` or `Err(what is wrong and what to do)`.
    pub result: Result<String, String>,
}

impl Check {
    /// A passed check.
    pub fn ok(name: impl Into<String>, found: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            result: Ok(found.into()),
        }
    }

    /// A failed check.
    pub fn failed(name: impl Into<String>, problem: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            result: Err(problem.into()),
        }
    }

    /// From a result whose error is displayed.
    pub fn from_result<E: fmt::Display>(
        name: impl Into<String>,
        result: Result<String, E>,
    ) -> Check {
        Check {
            name: name.into(),
            result: result.map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(found) => write!(f, "ok    {:<48} {found}", self.name),
            Err(problem) => write!(f, "FAIL  {:<48} {problem}", self.name),
        }
    }
}

/// Every check of a preflight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preflight {
    /// In the order run.
    pub checks: Vec<Check>,
}

impl Preflight {
    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.result.is_err())
    }

    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }
}

impl fmt::Display for Preflight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        let failed: Vec<&str> = self.failures().map(|c| c.name.as_str()).collect();
        if failed.is_empty() {
            write!(f, "preflight passed: {} checks", self.checks.len())
        } else {
            write!(
                f,
                "preflight FAILED: {} of {} checks — {}",
                failed.len(),
                self.checks.len(),
                failed.join("; ")
            )
        }
    }
}

/// A service's own preflight checks, run after the common ones.
pub trait ServiceChecks {
    /// Checks of the stage's own section: mapping, templates, directories, the API.
    /// `schemas` is `None` when they did not load (that check has failed already).
    fn service_checks<'a>(
        &'a self,
        schemas: Option<&'a SchemaStore>,
    ) -> impl Future<Output = Vec<Check>> + 'a;
}

/// Loads the dataset mapping at `path` (config key `key`) against the schemas.
pub fn mapping_check(
    key: &str,
    path: &Path,
    schemas: Option<&SchemaStore>,
) -> (Check, Option<Dataset>) {
    let name = format!("mapping {key}");
    let Some(schemas) = schemas else {
        return (
            Check::failed(name, "not checked: the schemas did not load"),
            None,
        );
    };
    match DatasetMapping::load(path, schemas) {
        Ok(dataset) => (
            Check::ok(
                name,
                format!("{} loads against the schemas", path.display()),
            ),
            Some(dataset),
        ),
        Err(error) => (Check::failed(name, error.to_string()), None),
    }
}

/// A directory the service reads (`writable` false) or writes: it must exist — or, for one it
/// writes, be creatable in an existing parent — and be usable.
pub fn directory_check(key: &str, path: &Path, writable: bool) -> Check {
    let name = format!("directory {key}");
    if path.is_dir() {
        if !writable {
            return Check::from_result(
                name,
                std::fs::read_dir(path)
                    .map(|_| format!("{} is readable", path.display()))
                    .map_err(|e| format!("{} cannot be read: {e}", path.display())),
            );
        }
        let probe = path.join(format!(".snapfeed-preflight-{}", std::process::id()));
        let written = std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe));
        return Check::from_result(
            name,
            written
                .map(|()| format!("{} is writable", path.display()))
                .map_err(|e| format!("{} is not writable: {e}", path.display())),
        );
    }
    match path.parent() {
        Some(parent) if writable && parent.is_dir() => Check::ok(
            name,
            format!(
                "{} will be created (in {})",
                path.display(),
                parent.display()
            ),
        ),
        _ => Check::failed(name, format!("{} is not a directory", path.display())),
    }
}

/// The preflight of a service: the common checks, then its own.
pub async fn preflight<C>(service: &'static str, config: &C) -> Preflight
where
    C: ServiceChecks + serde::Serialize + crate::service::HasCommonSections,
{
    let (mut checks, schemas) = common_checks(service, config.common(), config).await;
    checks.extend(config.service_checks(schemas.as_ref()).await);
    Preflight { checks }
}

/// The checks every service shares (see the module doc); also the schemas, when they load.
pub async fn common_checks<C: serde::Serialize>(
    service: &'static str,
    common: CommonSections<'_>,
    config: &C,
) -> (Vec<Check>, Option<SchemaStore>) {
    let mut checks = Vec::new();
    let schemas = SchemaStore::load_dir(&common.pipeline.schemas_dir);
    checks.push(Check::from_result(
        "schemas",
        schemas
            .as_ref()
            .map(|_| format!("loaded from {}", common.pipeline.schemas_dir.display())),
    ));
    checks.extend(secret_checks(config));
    checks.extend(broker::broker_checks(service, common).await);
    if let Some(registry) = common.schema_registry {
        checks.push(registry_check(registry).await);
    }
    (checks, schemas.ok())
}

/// The schema registry reached with the configured credentials.
pub async fn registry_check(config: &crate::avro::registry::SchemaRegistryConfig) -> Check {
    const NAME: &str = "schema registry";
    let registry = match crate::avro::registry::Registry::start(config) {
        Ok(registry) => registry,
        Err(error) => return Check::failed(NAME, error.to_string()),
    };
    Check::from_result(
        NAME,
        registry
            .probe()
            .await
            .map(|subjects| format!("{} answers, {subjects} subjects", config.url)),
    )
}

/// Every secret reference in `config`, resolved (values never shown).
pub fn secret_checks<C: serde::Serialize>(config: &C) -> Vec<Check> {
    let mut found = Vec::new();
    match toml::Value::try_from(config) {
        Ok(value) => collect_secret_refs(&value, String::new(), &mut found),
        Err(error) => {
            return vec![Check::failed(
                "secrets",
                format!("cannot walk the config: {error}"),
            )]
        }
    }
    if found.is_empty() {
        return vec![Check::ok("secrets", "no secret references in the config")];
    }
    found
        .into_iter()
        .map(|(key, secret)| {
            let what = match &secret {
                SecretRef::Env(name) => format!("environment variable {name} is set"),
                SecretRef::File(path) => format!("file {} is readable", path.display()),
            };
            Check::from_result(format!("secret {key}"), secret.resolve(&key).map(|_| what))
        })
        .collect()
}

fn collect_secret_refs(value: &toml::Value, path: String, found: &mut Vec<(String, SecretRef)>) {
    let toml::Value::Table(table) = value else {
        return;
    };
    // A secret reference is a one-key table `{ env = "…" }` or `{ file = "…" }` below a section.
    if path.contains('.') && table.len() == 1 {
        if let Ok(secret) = value.clone().try_into::<SecretRef>() {
            found.push((path, secret));
            return;
        }
    }
    for (key, inner) in table {
        let path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match inner {
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    collect_secret_refs(item, format!("{path}[{i}]"), found);
                }
            }
            other => collect_secret_refs(other, path, found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Config {
        kafka: Kafka,
        sink: Sink,
    }
    #[derive(serde::Serialize)]
    struct Kafka {
        bootstrap_servers: String,
        sasl_password: Option<SecretRef>,
    }
    #[derive(serde::Serialize)]
    struct Sink {
        auth: Auth,
    }
    #[derive(serde::Serialize)]
    struct Auth {
        token: SecretRef,
        headers: Vec<Header>,
    }
    #[derive(serde::Serialize)]
    struct Header {
        value: SecretRef,
    }

    #[test]
    fn every_secret_reference_is_resolved_and_its_value_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t-value\n").unwrap();
        let config = Config {
            kafka: Kafka {
                bootstrap_servers: "localhost:9092".into(),
                sasl_password: Some(SecretRef::Env(
                    "SNAPFEED_PREFLIGHT_TEST_UNSET_VARIABLE".into(),
                )),
            },
            sink: Sink {
                auth: Auth {
                    token: SecretRef::File(file),
                    headers: vec![Header {
                        value: SecretRef::File(dir.path().join("missing")),
                    }],
                },
            },
        };
        let checks = secret_checks(&config);
        let by_name = |name: &str| checks.iter().find(|c| c.name == name).unwrap();
        assert!(by_name("secret sink.auth.token").result.is_ok());
        let unset = by_name("secret kafka.sasl_password");
        assert!(
            unset
                .result
                .as_ref()
                .unwrap_err()
                .contains("SNAPFEED_PREFLIGHT_TEST_UNSET_VARIABLE"),
            "{unset}"
        );
        assert!(by_name("secret sink.auth.headers[0].value").result.is_err());
        let text: String = checks.iter().map(|c| format!("{c}\n")).collect();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(checks.len(), 3, "{text}");
    }

    #[test]
    fn directories_must_exist_or_be_creatable_and_be_usable() {
        let dir = tempfile::tempdir().unwrap();
        let ok = |check: Check| check.result.is_ok();
        assert!(ok(directory_check("source.inbox", dir.path(), false)));
        assert!(ok(directory_check("source.work_dir", dir.path(), true)));
        let new = dir.path().join("processed");
        let created = directory_check("source.processed_dir", &new, true);
        assert!(
            created.result.as_ref().unwrap().contains("will be created"),
            "{created}"
        );
        assert!(!new.exists(), "a preflight creates nothing");
        let nowhere = dir.path().join("no/such/inbox");
        let missing = directory_check("source.inbox", &nowhere, false);
        assert!(missing.result.unwrap_err().contains("no/such/inbox"));
        assert!(!ok(directory_check("source.failed_dir", &nowhere, true)));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the write probe is removed"
        );
    }

    #[test]
    fn the_report_names_each_failure() {
        let preflight = Preflight {
            checks: vec![
                Check::ok("broker", "reached x"),
                Check::failed("topic p.state", "missing"),
                Check::failed("api", "no answer"),
            ],
        };
        assert!(!preflight.passed());
        let text = preflight.to_string();
        assert!(
            text.ends_with("preflight FAILED: 2 of 3 checks — topic p.state; api"),
            "{text}"
        );
        assert!(text.contains("FAIL  topic p.state"), "{text}");
    }
}
