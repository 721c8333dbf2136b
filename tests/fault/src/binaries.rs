//! The service binaries under test: `file-source`, `change-detector`, `api-sink`, as built by
//! `cargo build --workspace --bins` (or `cargo test --workspace`, which builds them for the
//! services' own integration tests). A package's binaries are not built for another package's
//! tests, so this crate finds them next to its test executable
//! (`target/debug/deps/<test>` → `target/debug`), or in `SNAPFEED_BIN_DIR`.

use std::path::{Path, PathBuf};

/// The directory holding the service binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SNAPFEED_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test executable lives in target/<profile>/deps")
}

/// The path of service binary `name`; fails the test, saying how to build it, when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "service binary {} is missing: build the binaries first with \
         `cargo build --workspace --bins` (or run `cargo test --workspace`), \
         or point SNAPFEED_BIN_DIR at a directory holding file-source, change-detector and api-sink",
        path.display()
    );
    path
}
