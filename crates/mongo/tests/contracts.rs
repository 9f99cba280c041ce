//! The port contract suites against the MongoDB adapters, plus the MongoDB-specific behaviours
//! (migrations, corrupt documents, read-all paging). Each test gets its own migrated database on the
//! server at `RIDEHAIL_TEST_MONGODB_URI` and drops it at the end; without the variable each test
//! reports itself SKIPPED.
//!
//! Against a server without unique-index enforcement (CongoDB), the behaviours that rest on it
//! (concurrent appends) report themselves SKIPPED; against MongoDB every test runs.

use std::sync::Arc;

use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};
use ridehail_contract::{Capability, Fixture};
use ridehail_events::ride::RideStatus;
use ridehail_events::{AggregateType, RideId, UserId, WireEvent};
use ridehail_mongo::migrations::{self, MigrationId};
use ridehail_mongo::{
    MongoEventStore, MongoGenerations, MongoRideViews, MongoSettings, MongoTimers, MongoUserViews, Stores,
};
use ridehail_ports::{EventStore, RideViews, TimerStore};
use uuid::Uuid;

fn settings(uri: String) -> MongoSettings {
    MongoSettings { uri, database: ridehail_contract::unique_name("ridehail-test"), ..MongoSettings::default() }
}

/// A fresh, empty database (not migrated), or `None` when no server is configured.
async fn fresh_db() -> Option<(MongoSettings, Database)> {
    let settings = settings(ridehail_contract::test_server("RIDEHAIL_TEST_MONGODB_URI")?);
    let db = ridehail_mongo::connect(&settings).await.unwrap();
    Some((settings, db))
}

async fn migrated_db() -> Option<Database> {
    let (_, db) = fresh_db().await?;
    migrations::up(&db).await.unwrap();
    Some(db)
}

/// Whether the server refuses a second document with the same value of a unique-indexed field.
async fn enforces_unique_indexes(db: &Database) -> bool {
    let scratch = db.collection::<Document>("unique_index_probe");
    let index = mongodb::IndexModel::builder()
        .keys(doc! {"k": 1})
        .options(mongodb::options::IndexOptions::builder().unique(true).name("k".to_owned()).build())
        .build();
    scratch.create_index(index).await.unwrap();
    scratch.insert_one(doc! {"k": 1}).await.unwrap();
    let enforced = scratch.insert_one(doc! {"k": 1}).await.is_err();
    scratch.drop().await.unwrap();
    enforced
}

/// An adapter on a fresh migrated database, dropped after the case.
async fn fixture<A: Send + Sync + 'static>(open: fn(&Database) -> A) -> Option<Fixture<A>> {
    let db = migrated_db().await?;
    let mut fixture = Fixture::new(Arc::new(open(&db)));
    if !enforces_unique_indexes(&db).await {
        fixture = fixture.lacking(Capability::UniqueIndex, "server lacks unique index enforcement");
    }
    Some(fixture.then(async move { db.drop().await.unwrap() }))
}

async fn event_store() -> Option<Fixture<MongoEventStore>> {
    fixture(MongoEventStore::new).await
}
ridehail_contract::event_store_suite!(event_store);

/// The same contract with multi-event appends in transactions (where the server runs them, as
/// [`ridehail_mongo::open`] decides at start-up).
mod transactional {
    use super::*;

    async fn event_store() -> Option<Fixture<MongoEventStore>> {
        let db = migrated_db().await?;
        if !ridehail_mongo::supports_transactions(&db).await.unwrap() {
            db.drop().await.unwrap();
            eprintln!("SKIPPED (transactional event store: server runs no transactions; a replica set does)");
            return None;
        }
        let mut fixture = Fixture::new(Arc::new(MongoEventStore::with_transactions(&db, true)));
        if !enforces_unique_indexes(&db).await {
            fixture = fixture.lacking(Capability::UniqueIndex, "server lacks unique index enforcement");
        }
        Some(fixture.then(async move { db.drop().await.unwrap() }))
    }
    ridehail_contract::event_store_suite!(event_store);
}

/// A batch whose second event cannot be stored (its global position is taken): with transactions
/// nothing of it is stored; without, its first event is (the prefix the event store documents).
#[tokio::test]
async fn a_failed_multi_event_append_is_all_or_nothing_with_transactions() {
    let Some(db) = migrated_db().await else { return };
    if !enforces_unique_indexes(&db).await {
        eprintln!("SKIPPED (all-or-nothing appends: server lacks unique index enforcement)");
        return db.drop().await.unwrap();
    }
    let transactions = ridehail_mongo::supports_transactions(&db).await.unwrap();
    let store = MongoEventStore::with_transactions(&db, transactions);
    assert_eq!(store.transactional(), transactions);
    // Position 1 goes to a first append; the batch below will be given 2 and 3: take 3 beforehand.
    store.append(0, &[event(Uuid::now_v7(), 1)]).await.unwrap();
    let mut squatter = db.collection::<Document>("events").find_one(doc! {}).await.unwrap().unwrap();
    squatter.remove("_id");
    squatter.insert("position", 3_i64);
    squatter.insert("aggregate_id", Uuid::now_v7().to_string());
    db.collection::<Document>("events").insert_one(squatter).await.unwrap();

    let stream = Uuid::now_v7();
    let result = store.append(0, &[event(stream, 1), event(stream, 2)]).await;
    assert!(result.is_err(), "{result:?}");
    let stored = store.read_stream(stream).await.unwrap();
    if transactions {
        assert!(stored.is_empty(), "a transaction stores all of a batch or none: {stored:?}");
    } else {
        eprintln!("SKIPPED (all-or-nothing appends: server runs no transactions; the prefix is kept)");
        assert_eq!(stored.len(), 1, "without transactions the batch's prefix is stored: {stored:?}");
    }
    db.drop().await.unwrap();
}

async fn ride_views() -> Option<Fixture<MongoRideViews>> {
    fixture(MongoRideViews::new).await
}
ridehail_contract::ride_views_suite!(ride_views);

async fn user_views() -> Option<Fixture<MongoUserViews>> {
    fixture(MongoUserViews::new).await
}
ridehail_contract::user_views_suite!(user_views);

async fn generations() -> Option<Fixture<MongoGenerations>> {
    fixture(MongoGenerations::new).await
}
ridehail_contract::generations_suite!(generations);

async fn timers() -> Option<Fixture<MongoTimers>> {
    fixture(MongoTimers::new).await
}
ridehail_contract::timers_suite!(timers);

// ------------------------------------------------------------------ migrations

fn versions(ids: &[MigrationId]) -> Vec<u32> {
    ids.iter().map(|m| m.version).collect()
}

async fn index_names(db: &Database, collection: &str) -> Vec<String> {
    db.collection::<Document>(collection).list_index_names().await.unwrap_or_default()
}

#[tokio::test]
async fn migrations_apply_once_and_status_lists_every_version() {
    let Some((_, db)) = fresh_db().await else { return };
    let before = migrations::status(&db).await.unwrap();
    assert!(!before.is_empty() && before.iter().all(|m| m.applied_at.is_none() && !m.unknown));

    let applied = migrations::up(&db).await.unwrap();
    let all: Vec<u32> = migrations::all().iter().map(|m| m.version).collect();
    assert_eq!(versions(&applied), all);
    assert!(migrations::up(&db).await.unwrap().is_empty(), "a second up is a no-op");

    let after = migrations::status(&db).await.unwrap();
    assert_eq!(after.iter().map(|m| m.version).collect::<Vec<_>>(), all);
    assert!(after.iter().all(|m| m.applied_at.is_some()));
    assert!(migrations::pending(&db).await.unwrap().is_empty());
    db.drop().await.unwrap();
}

#[tokio::test]
async fn migrations_create_their_named_indexes() {
    let Some(db) = migrated_db().await else { return };
    for migration in migrations::all() {
        for change in &migration.changes {
            let migrations::Change::CreateIndex { collection, name, .. } = change;
            assert!(index_names(&db, collection).await.iter().any(|n| n == name), "{collection}.{name} is missing");
        }
    }
    db.drop().await.unwrap();
}

#[tokio::test]
async fn migrations_go_down_the_latest_one_and_up_again() {
    let Some(db) = migrated_db().await else { return };
    let latest = migrations::all().pop().unwrap();
    let undone = migrations::down(&db, 1).await.unwrap();
    assert_eq!(versions(&undone), [latest.version]);
    let status = migrations::status(&db).await.unwrap();
    assert!(status.iter().all(|m| m.applied_at.is_some() == (m.version != latest.version)));
    for change in &latest.changes {
        let migrations::Change::CreateIndex { collection, name, .. } = change;
        assert!(!index_names(&db, collection).await.iter().any(|n| n == name), "{name} survived down");
    }

    assert_eq!(versions(&migrations::up(&db).await.unwrap()), [latest.version]);

    // All the way down and back up.
    let count = migrations::all().len();
    assert_eq!(migrations::down(&db, usize::MAX).await.unwrap().len(), count);
    assert!(migrations::status(&db).await.unwrap().iter().all(|m| m.applied_at.is_none()));
    assert_eq!(migrations::up(&db).await.unwrap().len(), count);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn open_migrates_when_asked_and_refuses_an_unmigrated_database() {
    let Some((settings, db)) = fresh_db().await else { return };
    let refused = ridehail_mongo::open(&settings).await.unwrap_err();
    assert!(format!("{refused:#}").contains("lacks"), "{refused:#}");

    let stores: Stores =
        ridehail_mongo::open(&MongoSettings { migrate_on_start: Some(true), ..settings.clone() }).await.unwrap();
    stores.events.ping().await.unwrap();
    ridehail_mongo::open(&settings).await.unwrap();
    db.drop().await.unwrap();
}

// ------------------------------------------------------------------ bad input

#[tokio::test]
async fn a_corrupt_document_is_an_error_naming_collection_and_key() {
    let Some(db) = migrated_db().await else { return };
    let ride = RideId::new();
    db.collection::<Document>("rides")
        .insert_one(doc! {"ride_id": ride.to_string(), "rider_id": "not-a-uuid", "version": 1})
        .await
        .unwrap();
    let err = MongoRideViews::new(&db).get(ride).await.unwrap_err();
    assert!(format!("{err:#}").contains(&format!("rides document ride_id={ride} does not decode")), "{err:#}");

    let stream = Uuid::now_v7();
    db.collection::<Document>("events")
        .insert_one(doc! {"aggregate_id": stream.to_string(), "sequence": 1, "position": 1, "payload": {}})
        .await
        .unwrap();
    let err = MongoEventStore::new(&db).read_stream(stream).await.unwrap_err();
    assert!(format!("{err:#}").contains(&format!("events document {stream}#1 does not decode")), "{err:#}");

    db.collection::<Document>("timers")
        .insert_one(doc! {"timer_id": "broken", "due_us": 0_i64, "due_at": "yesterday"})
        .await
        .unwrap();
    let err = MongoTimers::new(&db).due(chrono::Utc::now(), 10).await.unwrap_err();
    assert!(format!("{err:#}").contains("timers document timer_id=broken does not decode"), "{err:#}");
    db.drop().await.unwrap();
}

// ------------------------------------------------------------------ event store specifics

fn event(aggregate_id: Uuid, sequence: u64) -> WireEvent {
    WireEvent {
        event_id: Uuid::now_v7(),
        event_type: "RideRequested".into(),
        schema_version: 1,
        aggregate_type: AggregateType::Ride,
        aggregate_id,
        sequence,
        correlation_id: Uuid::now_v7(),
        causation_id: Uuid::now_v7(),
        // Sub-microsecond precision must survive storage.
        occurred_at: chrono::DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap(),
        payload: serde_json::json!({"fare": {"total_minor": 650, "surge": 1.25}, "tags": ["a", null]}),
    }
}

#[tokio::test]
async fn read_all_pages_with_its_cursor_to_the_end() {
    let Some(db) = migrated_db().await else { return };
    let store = MongoEventStore::new(&db);
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    let written = vec![event(x, 1), event(x, 2), event(y, 1), event(x, 3), event(y, 2)];
    store.append(0, &written[..2]).await.unwrap();
    store.append(0, &written[2..3]).await.unwrap();
    store.append(2, &written[3..4]).await.unwrap();
    store.append(1, &written[4..]).await.unwrap();

    let mut read = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.read_all(cursor.as_deref(), 2).await.unwrap();
        if page.events.is_empty() {
            assert_eq!(page.next, None);
            break;
        }
        assert!(page.events.len() <= 2);
        cursor = page.next;
        read.extend(page.events);
    }
    assert_eq!(read, written, "every event once, in append order, unchanged");
    // Past the end: nothing, and the same cursor keeps working once more events arrive.
    assert!(store.read_all(cursor.as_deref(), 10).await.unwrap().events.is_empty());
    let later = event(y, 3);
    store.append(2, std::slice::from_ref(&later)).await.unwrap();
    assert_eq!(store.read_all(cursor.as_deref(), 10).await.unwrap().events, [later]);
    assert!(store.read_all(Some("not a position"), 10).await.is_err());
    db.drop().await.unwrap();
}

#[tokio::test]
async fn events_are_stored_with_string_ids_a_document_payload_and_a_position() {
    let Some(db) = migrated_db().await else { return };
    let written = event(Uuid::now_v7(), 1);
    MongoEventStore::new(&db).append(0, std::slice::from_ref(&written)).await.unwrap();
    let stored = db.collection::<Document>("events").find_one(doc! {}).await.unwrap().unwrap();
    assert_eq!(stored.get_str("aggregate_id").unwrap(), written.aggregate_id.to_string());
    assert_eq!(stored.get_str("event_id").unwrap(), written.event_id.to_string());
    assert_eq!(stored.get_str("occurred_at").unwrap(), "2027-01-15T08:00:00.123456789Z");
    assert_eq!(
        stored.get_document("payload").unwrap().get_document("fare").unwrap().get_i32("total_minor").unwrap(),
        650
    );
    // MongoDB keeps the int64 written; CongoDB narrows small values to int32.
    assert!(matches!(stored.get("position"), Some(Bson::Int64(1..) | Bson::Int32(1..))), "{stored}");
    assert!(stored.get_datetime("occurred_at_date").is_ok());
    db.drop().await.unwrap();
}

#[tokio::test]
async fn ride_lists_page_by_driver_with_a_status_filter() {
    let Some(db) = migrated_db().await else { return };
    let views = MongoRideViews::new(&db);
    let driver = UserId::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut view = ridehail_contract::ride_view(RideId::new(), UserId::new(), 1);
        view.driver_id = Some(driver);
        view.status = if i % 2 == 0 { RideStatus::Completed } else { RideStatus::InProgress };
        views.upsert(&view).await.unwrap();
        ids.push(view.ride_id);
    }
    let query = |before| ridehail_ports::RideQuery {
        party: ridehail_ports::RideParty::Driver(driver),
        status: Some(RideStatus::Completed),
        limit: 1,
        before,
    };
    let first = views.list(&query(None)).await.unwrap();
    assert_eq!(first.iter().map(|r| r.ride_id).collect::<Vec<_>>(), [ids[2]]);
    let second = views.list(&query(Some(ids[2]))).await.unwrap();
    assert_eq!(second.iter().map(|r| r.ride_id).collect::<Vec<_>>(), [ids[0]]);
    assert!(views.list(&query(Some(ids[0]))).await.unwrap().is_empty());
    db.drop().await.unwrap();
}
