//! `schemas/` is generated from the types; this test fails when they drift apart.
//! Regenerate with `RIDEHAIL_UPDATE_SCHEMAS=1 cargo test -p ridehail-events --test schemas`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ridehail_events::schema::catalogue;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn json_files_under(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            json_files_under(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.insert(path.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn schemas_on_disk_match_the_types() {
    let dir = schemas_dir();
    let files = catalogue();
    if std::env::var_os("RIDEHAIL_UPDATE_SCHEMAS").is_some() {
        for file in &files {
            let path = dir.join(&file.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file.contents()).unwrap();
        }
    }
    let mut drifted = Vec::new();
    for file in &files {
        match std::fs::read_to_string(dir.join(&file.path)) {
            Ok(on_disk) if on_disk == file.contents() => {}
            Ok(_) => drifted.push(format!("{} differs", file.path)),
            Err(_) => drifted.push(format!("{} is missing", file.path)),
        }
    }
    let mut expected: BTreeSet<String> = files.iter().map(|f| f.path.clone()).collect();
    for retired in ridehail_events::schema::RETIRED {
        if !dir.join(retired).is_file() {
            drifted.push(format!("{retired} (a retired version, kept as committed) is missing"));
        }
        expected.insert(retired.to_owned());
    }
    let mut on_disk = BTreeSet::new();
    json_files_under(&dir, &dir, &mut on_disk);
    for stale in on_disk.difference(&expected) {
        drifted.push(format!("{stale} has no type behind it"));
    }
    assert!(
        drifted.is_empty(),
        "schemas/ drifted from the types (regenerate with RIDEHAIL_UPDATE_SCHEMAS=1):\n{}",
        drifted.join("\n")
    );
}

#[test]
fn internal_messages_have_no_public_schema() {
    let paths: Vec<String> = catalogue().into_iter().map(|f| f.path).collect();
    assert!(paths.iter().any(|p| p == "events/user/UserRegistered.v1.json"));
    assert!(!paths.iter().any(|p| p.contains("PasswordSet")));
    assert!(!paths.iter().any(|p| p.contains("EmailClaimed")));
}

#[test]
fn every_schema_pins_its_type_and_version() {
    for file in catalogue() {
        let props = &file.schema["properties"];
        let type_field = if file.path.starts_with("commands/") { "command_type" } else { "event_type" };
        let name = props[type_field]["const"].as_str().unwrap();
        assert!(file.path.contains(&format!("/{name}.v")), "{} pins {name}", file.path);
        assert!(props["schema_version"]["const"].is_u64(), "{}", file.path);
        assert!(props["payload"].is_object(), "{}", file.path);
    }
}

/// `asyncapi/ridehail.json` is generated from the same types; regenerate it the same way.
#[test]
fn asyncapi_on_disk_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(ridehail_events::asyncapi::PATH);
    let generated = ridehail_events::asyncapi::contents();
    if std::env::var_os("RIDEHAIL_UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} drifted from the types (regenerate with RIDEHAIL_UPDATE_SCHEMAS=1)",
        path.display()
    );
}

#[test]
fn every_public_event_is_a_message_of_its_topic_s_channel_and_refers_to_its_schema_file() {
    let document = ridehail_events::asyncapi::document();
    let events: Vec<_> = catalogue().into_iter().filter(|f| f.path.starts_with("events/")).collect();
    assert!(events.len() >= 10);
    for file in events {
        let channel = if file.path.starts_with("events/ride/") { "rideEvents" } else { "userEvents" };
        let title = file.schema["title"].as_str().unwrap();
        let key = title.replace(" v", ".v");
        assert!(document["channels"][channel]["messages"][&key].is_object(), "{key} in {channel}");
        let payload = &document["components"]["messages"][&key]["payload"]["$ref"];
        assert_eq!(payload.as_str(), Some(format!("../schemas/{}", file.path).as_str()));
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas").join(&file.path);
        assert!(target.exists(), "{} exists", target.display());
    }
    assert_eq!(document["channels"]["deadLetters"]["address"], "ridehail.dead-letters");
}

/// Events the previous code stored (schema version 1, `tests/fixtures/ride-history.v1.json`, written
/// by it) are read by this code: upcast to the current version, and valid against the retired
/// schema files they were written to.
#[test]
fn version_1_events_written_by_the_previous_code_are_read_by_this_one() {
    use ridehail_events::ride::{FareTotal, RideEvent};
    use ridehail_events::{EventEnvelope, Message as _, WireEvent};
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ride-history.v1.json");
    let stored: Vec<WireEvent> = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let versions: Vec<(String, u16)> = stored.iter().map(|e| (e.event_type.clone(), e.schema_version)).collect();
    assert!(versions.contains(&("RideRequested".into(), 1)) && versions.contains(&("RideCompleted".into(), 1)));
    for wire in &stored {
        let path = format!("events/ride/{}.v{}.json", wire.event_type, wire.schema_version);
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(schemas_dir().join(&path)).unwrap()).unwrap();
        assert_eq!(schema["properties"]["schema_version"]["const"], wire.schema_version, "{path}");
        assert!(wire.payload.get("estimate").or(wire.payload.get("fare")).is_none_or(|f| f.get("total").is_none()));
    }
    let events: Vec<EventEnvelope<RideEvent>> =
        stored.into_iter().map(|w| EventEnvelope::from_wire(w).expect("v1 decodes")).collect();
    let fares: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            RideEvent::RideRequested(r) => Some(r.estimate.clone()),
            RideEvent::RideCompleted(c) => Some(c.fare.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(fares.len(), 2);
    for fare in fares {
        assert_eq!(
            fare.total,
            FareTotal { amount_minor: fare.total_minor, currency: fare.currency.clone(), minor_units: 2 }
        );
    }
    // Re-encoded, they are the current version.
    assert!(events.iter().all(|e| e.to_wire().schema_version == e.event.schema_version()));
    assert_eq!(events[0].to_wire().schema_version, 2);
}
