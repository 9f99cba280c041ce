//! The OpenAPI document: committed as generated (drift), listing every route the router serves
//! and nothing else, served at `/openapi.json` and `/docs`. The linter and the fuzzing of the
//! running edge are in `tests/api_contract.rs` (they need their tools installed).
//! Regenerate the file with `RIDEHAIL_UPDATE_OPENAPI=1 cargo test -p api-edge --test openapi`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use api_edge::auth::{JwtKeys, KeyMaterial};
use api_edge::{AppState, EdgeConfig, openapi, router};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use ridehail_ports::SystemClock;
use secrecy::SecretString;
use serde_json::Value;
use tower::ServiceExt as _;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi/ridehail.json")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let path = committed();
    let generated = openapi::contents();
    if std::env::var_os("RIDEHAIL_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "openapi/ridehail.json differs from the code; regenerate with RIDEHAIL_UPDATE_OPENAPI=1 cargo test -p api-edge --test openapi"
    );
}

/// `(METHOD, /path/{param})` of every `.route(…)` in the router's source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let mut routes = BTreeSet::new();
    for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let path = line.split('"').nth(1).unwrap().to_owned();
        let handlers = line.split_once(',').unwrap().1;
        for method in ["get", "post", "put", "patch", "delete"] {
            if handlers.contains(&format!("{method}(")) {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let source = routes_in_source();
    assert!(source.len() > 20, "the router's routes were not found in src/lib.rs: {source:?}");
    assert_eq!(source, routes_in_document(openapi::document()));
}

#[test]
fn every_schema_reference_resolves_and_every_error_is_a_problem() {
    let doc = openapi::document();
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    assert!(refs.len() > 50);
    for reference in refs {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("external reference {reference}"));
        assert!(doc.pointer(pointer).is_some(), "{reference} does not resolve");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                // Readiness answers 503 with its checks, not a problem.
                let readiness = path == "/health/ready" && status == "503";
                if (status.starts_with('4') || status.starts_with('5')) && !readiness {
                    let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/Problem", "{method} {path} {status}");
                }
            }
            let five_hundred = &operation["responses"]["500"];
            assert!(five_hundred.is_object(), "{method} {path} does not document its 500");
        }
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn command_submissions_document_their_headers_and_rejections() {
    let doc = openapi::document();
    let operation = &doc["paths"]["/v1/rides"]["post"];
    let parameters: Vec<&str> =
        operation["parameters"].as_array().unwrap().iter().map(|p| p["$ref"].as_str().unwrap_or_default()).collect();
    for name in ["IdempotencyKey", "Prefer", "CorrelationId"] {
        assert!(parameters.contains(&format!("#/components/parameters/{name}").as_str()), "{parameters:?}");
    }
    assert_eq!(operation["responses"]["202"]["headers"]["Location"]["$ref"], "#/components/headers/Location");
    assert_eq!(operation["responses"]["429"]["headers"]["Retry-After"]["$ref"], "#/components/headers/RetryAfter");
    let conflict = operation["responses"]["409"]["description"].as_str().unwrap();
    assert!(conflict.contains("active_ride_exists") && conflict.contains("idempotency_key_in_progress"), "{conflict}");
    assert_eq!(operation["security"][0]["bearer"], Value::Array(vec![]));
    // A query, not a command: no idempotency key.
    let list = &doc["paths"]["/v1/rides"]["get"]["parameters"];
    assert!(!list.to_string().contains("IdempotencyKey"));
    assert!(list.to_string().contains("#/components/schemas/RideStatus"));
}

#[tokio::test]
async fn the_edge_serves_the_document_and_the_docs_page() {
    let dir = tempfile::TempDir::new().unwrap();
    let backend = ridehail_sqlite::open(dir.path(), 2, Arc::new(SystemClock)).unwrap();
    let material = KeyMaterial {
        secret: Some(SecretString::from("openapi-test-secret-openapi-test-secret".to_owned())),
        ..KeyMaterial::default()
    };
    let keys = JwtKeys::new(&material, EdgeConfig::default().token_policy()).unwrap();
    let hash_key = SecretString::from("openapi-test-hash-key-openapi-test-hash-key".to_owned());
    let app = router(AppState::new(backend, keys, EdgeConfig::default(), hash_key));

    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(get("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(&served, openapi::document());

    let response = app.clone().oneshot(get("/docs/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    // The UI's script is served from the binary (nothing is fetched from elsewhere).
    let response = app.oneshot(get("/docs/swagger-ui-bundle.js")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let script = response.into_body().collect().await.unwrap().to_bytes();
    assert!(script.len() > 100_000, "{} bytes", script.len());
}
