//! The published contracts, checked by real validators: `asyncapi/ridehail.json` (generated from the
//! types, drift-tested in crates/events) passes the AsyncAPI CLI with its references into `schemas/`
//! resolved, and a broken copy does not.

use std::path::Path;
use std::process::Command;

/// Runs `asyncapi validate` on `document` from the directory holding it; success and what it said.
fn validate(cli: &str, document: &Path) -> (bool, String) {
    let output = Command::new(cli)
        .arg("validate")
        .arg(document.file_name().unwrap())
        .current_dir(document.parent().unwrap())
        .env("SUPPRESS_NO_CONFIG_WARNING", "1")
        .output()
        .expect("the AsyncAPI CLI runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

#[test]
fn the_asyncapi_document_is_valid_and_its_schema_references_resolve() {
    let Some(cli) = ridehail_contract::test_server("RIDEHAIL_TEST_ASYNCAPI") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A copy beside a link to schemas/, so the broken variant below resolves the same way.
    let scratch = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(scratch.path().join("asyncapi")).unwrap();
    std::os::unix::fs::symlink(root.join("schemas"), scratch.path().join("schemas")).unwrap();
    let document = scratch.path().join("asyncapi/ridehail.json");
    let text = std::fs::read_to_string(root.join(ridehail_events::asyncapi::PATH)).unwrap();
    std::fs::write(&document, &text).unwrap();
    let (ok, said) = validate(&cli, &document);
    assert!(ok && !said.contains(" error "), "asyncapi validate: {said}");

    // The validator does look: a reference to a schema file that does not exist fails it.
    let broken = text.replacen("RideRequested.v1.json", "NoSuchEvent.v1.json", 1);
    std::fs::write(&document, broken).unwrap();
    let (ok, said) = validate(&cli, &document);
    assert!(!ok, "a dangling reference must fail validation: {said}");
    assert!(said.contains("NoSuchEvent.v1.json"), "{said}");
}
