//! The edge's OpenAPI 3.1 document, generated from the code: each operation from the
//! `#[utoipa::path]` beside its handler, each schema from the Rust type the handler reads or
//! writes (schemars, as for the event schemas of `schemas/`), and the answers every operation
//! shares from the layers that give them (the body deadline, the rate limits, authentication, the
//! idempotency keys of command submissions, the problem format).
//!
//! Served at `/openapi.json` (with Swagger UI at `/docs`) and committed at `openapi/ridehail.json`;
//! a test fails when the two drift (`RIDEHAIL_UPDATE_OPENAPI=1` rewrites the file).

use std::sync::LazyLock;

use schemars::generate::{Contract, SchemaSettings};
use serde_json::{Map, Value, json};
use utoipa::OpenApi as _;

use crate::error::PROBLEM_JSON;
use crate::routes;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ridehail API",
        description = "Ride-hailing over HTTP. Writes are commands: the edge validates and publishes \
            them and answers `202 Accepted` with the command's id, its status URL (`Location`) and \
            the id of what it acts on; `Prefer: wait=N` (seconds) waits for the outcome instead. A \
            ride's changes stream as Server-Sent Events from `/v1/rides/{id}/updates`; a command's \
            outcome from `/v1/commands/{id}` with `Accept: text/event-stream`. Errors are RFC 9457 \
            problems (`application/problem+json`) whose `code` is stable. The events published \
            for analytics are described by the AsyncAPI document `asyncapi/ridehail.json`.",
        license(name = "MIT", identifier = "MIT")
    ),
    servers((url = "/", description = "The edge serving this document")),
    paths(
        routes::users::register,
        routes::sessions::login,
        routes::users::me,
        routes::users::update_me,
        routes::rides::request,
        routes::rides::list,
        routes::rides::get,
        routes::rides::history,
        crate::live::updates,
        routes::rides::cancel,
        routes::rides::rate,
        routes::rides::accept,
        routes::rides::decline,
        routes::rides::arrive,
        routes::rides::start,
        routes::rides::complete,
        routes::drivers::set_availability,
        routes::drivers::set_location,
        routes::commands::get,
        routes::dead_letters::list,
        routes::dead_letters::get,
        routes::dead_letters::redrive,
        routes::dead_letters::purge,
        routes::health::live,
        routes::health::ready,
        crate::admin::metrics,
        routes::health::jwks,
    ),
    tags(
        (name = "users", description = "Sign-up, login, profile."),
        (name = "rides", description = "Riders' rides, and what both parties read."),
        (name = "drivers", description = "What drivers do: availability, location, answering offers, driving."),
        (name = "commands", description = "What became of a submitted command."),
        (name = "operations", description = "Probes, metrics and keys, for operators and other services; the dead letters, for operators (an admin token)."),
    )
)]
struct ApiDoc;

/// Operations whose body may be left out (an empty body means the defaults).
const OPTIONAL_BODIES: [&str; 1] = ["completeRide"];

/// Operations on one ride, reached from a ride id (the links a client, or a fuzzer, follows).
const RIDE_OPERATIONS: [&str; 9] = [
    "getRide",
    "getRideHistory",
    "cancelRide",
    "rateRide",
    "acceptRide",
    "declineRide",
    "arriveAtPickup",
    "startRide",
    "completeRide",
];

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
    &DOCUMENT
}

/// The document as committed: pretty JSON with a final newline.
pub fn contents() -> String {
    let mut text = serde_json::to_string_pretty(document()).unwrap_or_default();
    text.push('\n');
    text
}

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["openapi"] = json!("3.1.0");
    doc["jsonSchemaDialect"] = json!("https://spec.openapis.org/oas/3.1/dialect/base");
    doc["components"] = components();
    // Where the ids of an answer lead. Not to the live updates: a stream stays open.
    let links = |from: &str| -> Value {
        RIDE_OPERATIONS
            .iter()
            .map(|op| {
                (op.to_string(), json!({ "operationId": op, "parameters": { "id": format!("$response.body#{from}") } }))
            })
            .collect::<Map<String, Value>>()
            .into()
    };
    doc["paths"]["/v1/rides"]["post"]["responses"]["202"]["links"] = links("/ride_id");
    doc["paths"]["/v1/rides"]["get"]["responses"]["200"]["links"] = links("/items/0/ride_id");
    // The ride states, as the views spell them (utoipa knows the parameter only as a string).
    if let Some(parameters) = doc["paths"]["/v1/rides"]["get"]["parameters"].as_array_mut() {
        for parameter in parameters.iter_mut().filter(|p| p["name"] == json!("status")) {
            parameter["schema"] = json!({ "$ref": "#/components/schemas/RideStatus" });
        }
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            for (_, operation) in item.as_object_mut().into_iter().flatten() {
                shared_answers(path, operation);
            }
        }
    }
    doc
}

/// Schemas for requests (what the edge accepts) and for answers (what it sends): types in both must
/// describe the same JSON.
fn components() -> Value {
    let mut schemas = Map::new();
    let requests = definitions(Contract::Deserialize, |g| {
        g.subschema_for::<routes::users::RegisterRequest>();
        g.subschema_for::<routes::sessions::LoginRequest>();
        g.subschema_for::<routes::users::ProfileUpdate>();
        g.subschema_for::<routes::rides::RideRequest>();
        g.subschema_for::<routes::rides::CancelRequest>();
        g.subschema_for::<routes::rides::RatingRequest>();
        g.subschema_for::<routes::rides::CompleteRequest>();
        g.subschema_for::<routes::drivers::AvailabilityRequest>();
        g.subschema_for::<routes::dead_letters::DeadLetterSelection>();
        g.subschema_for::<routes::Position>();
    });
    let answers = definitions(Contract::Serialize, |g| {
        g.subschema_for::<crate::submit::Accepted>();
        g.subschema_for::<crate::submit::AcceptedOutcome>();
        g.subschema_for::<routes::sessions::Session>();
        g.subschema_for::<ridehail_ports::UserProfile>();
        g.subschema_for::<ridehail_ports::RideView>();
        g.subschema_for::<ridehail_ports::CommandStatus>();
        g.subschema_for::<routes::rides::RidePage>();
        g.subschema_for::<routes::rides::RideHistory>();
        g.subschema_for::<routes::dead_letters::DeadLetterList>();
        g.subschema_for::<routes::dead_letters::DeadLetterAction>();
        g.subschema_for::<ridehail_runtime::dead_letters::DeadLetter>();
        g.subschema_for::<routes::health::Liveness>();
        g.subschema_for::<routes::health::Readiness>();
        g.subschema_for::<crate::error::Problem>();
    });
    for (name, schema) in requests.into_iter().chain(answers) {
        if let Some(known) = schemas.get(&name) {
            assert_eq!(known, &schema, "the schema {name} differs between requests and answers");
        }
        schemas.insert(name, schema);
    }
    schemas.insert("Jwks".into(), jwks_schema());
    json!({
        "schemas": schemas,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A token from `POST /v1/sessions` (EdDSA; keys at `/.well-known/jwks.json`)."
            }
        },
        "parameters": {
            "CorrelationId": {
                "name": "X-Correlation-Id", "in": "header", "required": false,
                "description": "Ties the request to the events it causes; a new one when left out or not a UUID.",
                "schema": { "type": "string" }
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "A retry with the same key and the same request answers as the first did \
                    (`Idempotent-Replayed: true`), and submits nothing again.",
                "schema": { "type": "string", "pattern": "^[!-~]{1,255}$" }
            },
            "Prefer": {
                "name": "Prefer", "in": "header", "required": false,
                "description": "RFC 7240 preferences; `wait=N` is honoured: wait up to N seconds (at most \
                    `edge.max_wait_seconds`) for the outcome and answer it (`Preference-Applied`), or `202` \
                    if it takes longer. Other preferences are ignored.",
                "schema": { "type": "string" }
            }
        },
        "headers": {
            "CorrelationId": {
                "description": "The request's correlation id (also on every event it causes).",
                "schema": { "type": "string", "format": "uuid" }
            },
            "RetryAfter": {
                "description": "Seconds to wait before retrying.",
                "schema": { "type": "integer", "minimum": 0 }
            },
            "Location": {
                "description": "The command's status URL.",
                "schema": { "type": "string" }
            }
        }
    })
}

/// The definitions a generator collects, with references into `#/components/schemas`.
fn definitions(contract: Contract, collect: impl FnOnce(&mut schemars::SchemaGenerator)) -> Map<String, Value> {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.contract = contract;
        })
        .into_generator();
    collect(&mut generator);
    generator.take_definitions(true)
}

/// `JwkSet` is jsonwebtoken's type, without a schema: what `/.well-known/jwks.json` holds.
fn jwks_schema() -> Value {
    json!({
        "description": "A JSON Web Key Set (RFC 7517) of Ed25519 public keys (RFC 8037).",
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty", "crv", "x", "kid"],
                    "properties": {
                        "kty": { "const": "OKP" },
                        "crv": { "const": "Ed25519" },
                        "x": { "type": "string", "description": "The public key, base64url." },
                        "kid": { "type": "string" },
                        "alg": { "const": "EdDSA" },
                        "use": { "const": "sig" }
                    }
                }
            }
        }
    })
}

/// The body of every error answer: a problem.
fn problem_content() -> Value {
    json!({ PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } })
}

fn header_ref(component: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{component}") })
}

/// Adds the answer for `status`, or appends `description` to the one the handler documents; the
/// problem body of errors is added for all of them at the end of [`shared_answers`].
fn answer(operation: &mut Value, status: &str, description: &str, headers: &[&str]) {
    let response = &mut operation["responses"][status];
    let known = response["description"].as_str().map(|d| format!("{d} ")).unwrap_or_default();
    response["description"] = json!(format!("{known}{description}"));
    for name in headers {
        response["headers"][*name] = header_ref(&name.replace('-', ""));
    }
}

/// What every operation can answer because of the layers it goes through, not its handler.
fn shared_answers(path: &str, operation: &mut Value) {
    let api = path.starts_with("/v1/");
    let secured = operation["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.as_object().is_some_and(|r| r.contains_key("bearer"))));
    let command = operation["responses"].get("202").is_some();
    let json_body = operation["requestBody"]["content"].get("application/json").is_some();
    let has_id = path.contains("{id}");
    let has_query = operation["parameters"].as_array().is_some_and(|ps| ps.iter().any(|p| p["in"] == json!("query")));

    let mut parameters = vec![json!({ "$ref": "#/components/parameters/CorrelationId" })];
    if command {
        parameters.push(json!({ "$ref": "#/components/parameters/IdempotencyKey" }));
        parameters.push(json!({ "$ref": "#/components/parameters/Prefer" }));
    }
    if let Some(own) = operation["parameters"].as_array() {
        parameters.extend(own.iter().cloned());
    }
    operation["parameters"] = Value::Array(parameters);

    if json_body {
        let optional = operation["operationId"].as_str().is_some_and(|id| OPTIONAL_BODIES.contains(&id));
        operation["requestBody"]["required"] = json!(!optional);
    }
    if command {
        let status = json!({ "operationId": "getCommand", "parameters": { "id": "$response.body#/command_id" } });
        operation["responses"]["202"]["links"]["getCommand"] = status;
        // Accepted in time, but not (yet) readable by the caller: the command's id instead.
        for status in ["200", "201"] {
            let schema = operation
                .pointer_mut(&format!("/responses/{status}/content/application~1json/schema"))
                .filter(|s| s.is_object());
            if let Some(schema) = schema {
                let resource = schema.take();
                *schema = json!({ "anyOf": [resource, { "$ref": "#/components/schemas/AcceptedOutcome" }] });
            }
        }
        operation["responses"]["202"]["headers"]["Location"] = header_ref("Location");
        answer(
            operation,
            "409",
            "`idempotency_key_in_progress`: a request with this `Idempotency-Key` is still being handled.",
            &[],
        );
        answer(operation, "422", "`idempotency_key_reused`: this `Idempotency-Key` came with another request.", &[]);
        let rejected = "With `Prefer: wait`: the command's rejection, `code` naming the rule it broke.";
        for status in ["403", "404", "409", "422"] {
            answer(operation, status, rejected, &[]);
        }
        answer(
            operation,
            "500",
            "With `Prefer: wait`: the command failed (`poison_message`, `processing_failed`).",
            &[],
        );
    }
    if json_body {
        answer(operation, "400", "`malformed_json`: the body is not JSON.", &[]);
        answer(operation, "422", "`invalid_request`: the body does not have the documented shape.", &[]);
        if operation["requestBody"]["required"] == json!(true) {
            answer(operation, "415", "`invalid_request`: the body is not `application/json`.", &[]);
        }
    }
    if has_query {
        answer(operation, "400", "`invalid_request`: a query parameter has the wrong type.", &[]);
    }
    if has_id {
        answer(operation, "422", "`validation_failed`: the id is not a UUID.", &[]);
    }
    if secured {
        answer(operation, "401", "`unauthenticated`: no bearer token, or an invalid or expired one.", &[]);
    }
    if api {
        answer(operation, "408", "`body_timeout`: the body did not arrive in time.", &[]);
        answer(operation, "413", "`body_too_large`: the body is larger than the limit.", &[]);
        answer(operation, "429", "`rate_limited`: too many requests from this client or user.", &["Retry-After"]);
        answer(
            operation,
            "503",
            "`overloaded` (too many requests in flight) or `unavailable` (a dependency is down).",
            &["Retry-After"],
        );
    }
    answer(operation, "500", "`internal`: an unexpected error (logged with the correlation id).", &[]);
    if let Some(responses) = operation["responses"].as_object_mut() {
        for (status, response) in responses.iter_mut() {
            // Every error is a problem, also those the handler documents by description only.
            if (status.starts_with('4') || status.starts_with('5')) && response.get("content").is_none() {
                response["content"] = problem_content();
            }
            response["headers"]["X-Correlation-Id"] = header_ref("CorrelationId");
        }
        // Status codes in order, as a reader looks them up.
        let mut sorted: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        responses.extend(sorted);
    }
}
