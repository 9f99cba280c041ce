//! The published contracts, checked by real validators:
//! - `asyncapi/ridehail.json` (generated from the types, drift-tested in crates/events) passes the
//!   AsyncAPI CLI with its references into `schemas/` resolved, and a broken copy does not;
//! - `openapi/ridehail.json` (generated from the handlers, drift-tested in crates/api-edge) passes
//!   Redocly's linter, and a broken copy does not;
//! - the running edge holds to `openapi/ridehail.json` under schemathesis, as a rider and as a
//!   driver: no 5xx, and every answer's status, content type, headers and body as documented.

mod support;

use std::path::Path;

use serde_json::json;
use support::{Api, Server, as_refs, load_test_limits, run_tool};

/// Runs `asyncapi validate` on `document` from the directory holding it; success and what it said.
fn validate(cli: &str, document: &Path) -> (bool, String) {
    let name = document.file_name().unwrap().to_str().unwrap();
    run_tool(cli, &["validate", name], document.parent().unwrap(), &[("SUPPRESS_NO_CONFIG_WARNING", "1")])
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
    let broken = text.replacen("DriverOffered.v1.json", "NoSuchEvent.v1.json", 1);
    assert_ne!(broken, text, "the document refers to DriverOffered.v1.json");
    std::fs::write(&document, broken).unwrap();
    let (ok, said) = validate(&cli, &document);
    assert!(!ok, "a dangling reference must fail validation: {said}");
    assert!(said.contains("NoSuchEvent.v1.json"), "{said}");
}

/// Runs `redocly lint` on `document` (with the repository's ignore file beside it).
fn lint(cli: &str, dir: &Path, document: &str) -> (bool, String) {
    let env = [("REDOCLY_TELEMETRY", "off"), ("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true")];
    run_tool(cli, &["lint", "--format=stylish", document], dir, &env)
}

#[test]
fn the_openapi_document_passes_the_linter() {
    let Some(cli) = ridehail_contract::test_server("RIDEHAIL_TEST_REDOCLY") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, said) = lint(&cli, root, "openapi/ridehail.json");
    assert!(ok, "redocly lint: {said}");
    assert!(said.contains("Your API description is valid") && !said.contains("You have"), "redocly lint warns: {said}");

    // The linter does look: a reference to a schema that does not exist fails it.
    let scratch = tempfile::TempDir::new().unwrap();
    let text = std::fs::read_to_string(root.join("openapi/ridehail.json")).unwrap();
    let broken = text.replacen("#/components/schemas/RideView", "#/components/schemas/NoSuchView", 1);
    std::fs::write(scratch.path().join("broken.json"), broken).unwrap();
    let (ok, said) = lint(&cli, scratch.path(), "broken.json");
    assert!(!ok, "a dangling reference must fail the lint: {said}");
    assert!(said.contains("no-unresolved-refs"), "{said}");
}

/// What one schemathesis run said, and how many cases it generated.
struct Fuzzed {
    passed: bool,
    cases: u64,
    said: String,
}

/// Fuzzes the edge at `url` from the committed document, authenticated with `token`. Every check
/// but `positive_data_acceptance`: the ride rules refuse much schema-valid input on purpose (a trip
/// of 0 m, a rider rating a ride not yet over), which a schema cannot say (docs/testing.md).
fn fuzz(cli: &str, url: &str, token: &str, seed: u32) -> Fuzzed {
    // Run from a scratch directory: schemathesis keeps a `.schemathesis/` of its own where it runs.
    let scratch = tempfile::TempDir::new().unwrap();
    let document = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/ridehail.json");
    fuzz_document(cli, scratch.path(), document.to_str().unwrap(), url, token, seed, &[])
}

fn fuzz_document(cli: &str, dir: &Path, document: &str, url: &str, token: &str, seed: u32, extra: &[&str]) -> Fuzzed {
    let (header, seed) = (format!("Authorization: Bearer {token}"), seed.to_string());
    let mut args = vec!["run", document, "--url", url, "--header", &header];
    args.extend(["--checks", "all", "--exclude-checks", "positive_data_acceptance"]);
    args.extend(["--max-examples", "25", "--seed", &seed, "--workers", "1", "--request-timeout", "20", "--no-color"]);
    args.extend(extra);
    let (passed, said) = run_tool(cli, &args, dir, &[("SCHEMATHESIS_TELEMETRY", "false")]);
    // "Test cases:\n  1458 generated, 1458 passed, 6 skipped"
    let cases = said
        .split("Test cases:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Fuzzed { passed, cases, said }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_running_edge_holds_to_its_openapi_document_as_rider_and_as_driver() {
    let Some(cli) = ridehail_contract::test_server("RIDEHAIL_TEST_SCHEMATHESIS") else { return };
    let dir = tempfile::TempDir::new().unwrap();
    // Every request comes from 127.0.0.1: limits high enough that the fuzzer is not just rate-limited.
    let server = Server::start(dir.path(), &as_refs(&load_test_limits()));
    let api = Api::new(&server.url);

    // A driver online, and a ride offered to them: the fuzzer reaches real rides through the links.
    let vehicle = json!({ "make": "Skoda", "model": "Octavia", "colour": "grey", "plate": "ST-0001" });
    let driver = json!({ "email": "fuzz-driver@example.com", "password": "fuzzing-driver-pw", "name": "Fuzz",
        "role": "driver", "vehicle": vehicle });
    let rider = json!({ "email": "fuzz-rider@example.com", "password": "fuzzing-rider-pw", "name": "Fuzz",
        "role": "rider" });
    for user in [driver, rider] {
        let (status, body) = api.send("POST", "/v1/users", None, Some(user)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (driver_id, driver_token) = api.login("fuzz-driver@example.com", "fuzzing-driver-pw").await;
    let (_, rider_token) = api.login("fuzz-rider@example.com", "fuzzing-rider-pw").await;
    let online = json!({ "online": true, "location": { "lat": 52.5200, "lon": 13.4050 } });
    let (status, body) = api.send("PUT", "/v1/drivers/me/availability", Some(&driver_token), Some(online)).await;
    assert_eq!(status, 200, "{body}");
    let trip = json!({ "pickup": { "lat": 52.5201, "lon": 13.4049 }, "dropoff": { "lat": 52.5300, "lon": 13.4200 } });
    let (status, ride) = api.send("POST", "/v1/rides", Some(&rider_token), Some(trip)).await;
    assert_eq!(status, 201, "{ride}");
    assert_eq!(ride["offered_driver_id"], driver_id.as_str());

    let document: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/ridehail.json")).unwrap(),
    )
    .unwrap();
    let operations: usize = document["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    let (fuzzer, url) = (cli.clone(), server.url.clone());
    let runs = tokio::task::spawn_blocking(move || {
        [("driver", fuzz(&fuzzer, &url, &driver_token, 1)), ("rider", fuzz(&fuzzer, &url, &rider_token, 2))]
    })
    .await
    .unwrap();
    let mut total = 0;
    for (role, run) in &runs {
        assert!(run.passed, "schemathesis as a {role} found failures:\n{}", run.said);
        assert!(run.cases >= 500, "schemathesis as a {role} ran {} cases:\n{}", run.cases, run.said);
        assert!(run.said.contains(&format!("Tested: {operations}\n")), "not every operation was tested:\n{}", run.said);
        total += run.cases;
    }
    println!("schemathesis: {total} cases over every operation, as a rider and as a driver");
    // The edge is still answering: the fuzzing did not take it down.
    let (status, _) = api.send("GET", "/health/ready", None, None).await;
    assert_eq!(status, 200);

    // The fuzzer does compare: against a document promising another liveness answer, it fails.
    let scratch = tempfile::TempDir::new().unwrap();
    let mut wrong = document.clone();
    wrong["components"]["schemas"]["HealthState"] = json!({ "enum": ["fine"] });
    std::fs::write(scratch.path().join("wrong.json"), wrong.to_string()).unwrap();
    let (url, dir) = (server.url.clone(), scratch.path().to_owned());
    let run = tokio::task::spawn_blocking(move || {
        fuzz_document(&cli, &dir, "wrong.json", &url, "none", 3, &["--include-operation-id", "live"])
    })
    .await
    .unwrap();
    assert!(!run.passed, "a wrong document must fail:\n{}", run.said);
    assert!(run.said.contains("Response violates schema"), "{}", run.said);
}
