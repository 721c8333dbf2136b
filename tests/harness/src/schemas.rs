//! Schema and mapping files for tests: the repository's `schemas/` and lab-results mapping,
//! and evolved copies of them (a new schema version with v2 moved to `history/`, a mapping
//! with one more field) for schema-evolution tests.

use std::path::{Path, PathBuf};

use snapfeed_runtime::avro::SchemaStore;
use snapfeed_runtime::dataset::{Dataset, DatasetMapping};

use crate::broker::repo_root;

/// The repository's `schemas/` directory.
pub fn schemas_dir() -> PathBuf {
    repo_root().join("schemas")
}

/// The repository's lab-results mapping (`deploy/config/lab_results.mapping.toml`).
pub fn lab_results_mapping() -> PathBuf {
    repo_root().join("deploy/config/lab_results.mapping.toml")
}

/// The schemas of `schemas_dir` and the dataset of `mapping` over them, as a service loads them.
pub fn load_dataset(schemas_dir: &Path, mapping: &Path) -> (SchemaStore, Dataset) {
    let store = SchemaStore::load_dir(schemas_dir)
        .unwrap_or_else(|e| panic!("schemas in {}: {e}", schemas_dir.display()));
    let dataset = DatasetMapping::load(mapping, &store)
        .unwrap_or_else(|e| panic!("mapping {}: {e}", mapping.display()));
    (store, dataset)
}

/// Copies the `*.avsc` files of the repository's `schemas/` and `schemas/history/` into `to`
/// (created if missing), for a test that changes a schema; returns `to`.
pub fn copy_schemas(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to.join("history")).expect("schemas copy");
    let source = schemas_dir();
    for sub in ["", "history"] {
        for entry in std::fs::read_dir(source.join(sub)).expect("schemas") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "avsc") {
                std::fs::copy(&path, to.join(sub).join(path.file_name().expect("name")))
                    .expect("copy schema");
            }
        }
    }
    to.to_path_buf()
}

/// Copies `schemas/` to `dir`, moving the current `lab_result.avsc` to
/// `history/lab_result.v2.avsc` and writing a v3 that appends `extra_field` (JSON); returns the
/// new schemas directory.
pub fn evolve_lab_result_schema(dir: &Path, extra_field: &str) -> PathBuf {
    let source = schemas_dir();
    let target = copy_schemas(&dir.join("schemas"));
    let current = std::fs::read_to_string(source.join("lab_result.avsc")).expect("lab_result");
    std::fs::write(target.join("history/lab_result.v2.avsc"), &current).expect("history v2");
    let end = current.rfind(']').expect("fields array");
    let evolved = format!(
        "{},\n    {extra_field}\n  {}",
        current[..end].trim_end(),
        &current[end..]
    );
    std::fs::write(target.join("lab_result.avsc"), evolved).expect("v3");
    target
}

/// Lab-results schema v3 and its mapping, in `dir`: v2 moves to `history/`, v3 appends a
/// nullable `specimen_source_site` that the mapping reads from a `Specimen_Source_Site`
/// column generated files do not have (so every value is null). Returns `(schemas
/// directory, mapping)`.
pub fn lab_result_v3_with_an_absent_column(dir: &Path) -> (PathBuf, PathBuf) {
    let schemas = evolve_lab_result_schema(
        dir,
        r#"{"name": "specimen_source_site", "type": ["null", "string"], "default": null}"#,
    );
    let mapping = extend_mapping(
        dir,
        "[[field]]\nname = \"specimen_source_site\"\ncolumn = \"Specimen_Source_Site\"\n",
    );
    (schemas, mapping)
}

/// A copy of the lab-results mapping in `dir` with one more `[[field]]` appended.
pub fn extend_mapping(dir: &Path, field_toml: &str) -> PathBuf {
    let mapping = std::fs::read_to_string(lab_results_mapping()).expect("mapping");
    let path = dir.join("lab_results.v3.mapping.toml");
    std::fs::write(&path, format!("{mapping}\n{field_toml}")).expect("mapping copy");
    path
}
