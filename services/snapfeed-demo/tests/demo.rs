//! The README's first command, smaller: the whole pipeline on the embedded broker reconciles.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::Command;

#[test]
fn the_one_command_run_reconciles_rows_changes_and_deliveries() {
    let output = Command::new(env!("CARGO_BIN_EXE_snapfeed-demo"))
        .args(["--rows", "3000", "--timeout-seconds", "120"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    // First contact: no client configuration warnings, and no colour codes in a pipe.
    for noise in ["CONFWARN", "will be ignored by this", "\x1b["] {
        assert!(
            !stderr.contains(noise),
            "{noise:?} in the demo's stderr:\n{stderr}"
        );
    }
    for label in ["1 initial", "2 changed", "3 re-sent + bad rows"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label}:\n{stdout}"));
        assert!(!line.contains("MISMATCH"), "{line}");
    }
    assert!(stdout.contains("every change delivered once"), "{stdout}");
    // The operator's trace of an updated record: its rows, both versions, both deliveries,
    // the changed fields by name only.
    let trace = stdout
        .split("(values redacted):")
        .nth(1)
        .unwrap_or_else(|| panic!("no trace:\n{stdout}"));
    assert!(!trace.contains("TRACE INCOMPLETE"), "{trace}");
    assert!(
        trace.contains("UPDATE v2") && trace.contains("changed: "),
        "{trace}"
    );
    let delivered = trace.lines().filter(|l| l.contains(" delivered ")).count();
    assert_eq!(delivered, 2, "{trace}");
    // First snapshot: every row created and delivered.
    let first = stdout.lines().find(|l| l.starts_with("1 initial")).unwrap();
    let columns: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(columns[2], "3000", "rows sent: {first}");
    assert_eq!(columns[5], "3000", "created: {first}");
    assert_eq!(columns[8], "3000", "delivered: {first}");
}
