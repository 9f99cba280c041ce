//! MongoDB over TLS: stunnel with a certificate from a CA this test makes, in front of the test server
//! (CongoDB speaks no TLS; against a real MongoDB the same path runs), and the driver configured with
//! `mongodb.tls_ca_file`: the event store works through it, a client trusting another CA does not.

use ridehail_contract::tls::{TestCa, free_port, have_binary, stunnel};
use ridehail_mongo::{MongoEventStore, MongoSettings, migrations};
use ridehail_ports::EventStore;

/// The port of the test server's URI (`mongodb://host:port/...`).
fn port_of(uri: &str) -> u16 {
    let authority = uri.split("://").nth(1).unwrap().split(['/', '?']).next().unwrap();
    authority.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_speaks_tls_with_the_configured_ca_and_refuses_a_server_it_cannot_verify() {
    let Some(uri) = ridehail_contract::test_server("RIDEHAIL_TEST_MONGODB_URI") else { return };
    if !have_binary(&std::env::var("RIDEHAIL_TEST_STUNNEL").unwrap_or_else(|_| "stunnel4".into())) {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let ca = TestCa::new(dir.path());
    let port = free_port();
    let _terminator = stunnel(&ca, port, port_of(&uri));
    let options = uri.split_once('?').map(|(_, q)| format!("?{q}&tls=true")).unwrap_or_else(|| "?tls=true".into());
    let settings = MongoSettings {
        uri: format!("mongodb://127.0.0.1:{port}/{options}"),
        database: ridehail_contract::unique_name("tls").replace('-', "_"),
        tls_ca_file: Some(ca.ca_file.clone()),
        server_selection_timeout_ms: 5_000,
        ..MongoSettings::default()
    };
    assert!(settings.uses_tls());
    let db = ridehail_mongo::connect(&settings).await.unwrap();
    migrations::up(&db).await.unwrap();
    ridehail_contract::event_store_reads_back_a_stream_in_order(&MongoEventStore::new(&db)).await;
    MongoEventStore::new(&db).ping().await.unwrap();
    db.drop().await.unwrap();

    let other_dir = tempfile::TempDir::new().unwrap();
    let stranger = TestCa::new(other_dir.path());
    let untrusting =
        MongoSettings { tls_ca_file: Some(stranger.ca_file.clone()), server_selection_timeout_ms: 1_500, ..settings };
    let db = ridehail_mongo::connect(&untrusting).await.unwrap();
    assert!(MongoEventStore::new(&db).ping().await.is_err(), "a server the driver cannot verify was trusted");
}
