//! Every metric a Ridehail process exports, named and described in one place (docs/observability.md
//! lists them with the questions they answer). Recorded through the `metrics` facade: a no-op until
//! [`crate::telemetry::init`] installs the Prometheus recorder.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

pub const HTTP_REQUESTS: &str = "ridehail_http_requests_total";
pub const HTTP_DURATION: &str = "ridehail_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "ridehail_http_requests_in_flight";
pub const HTTP_SHED: &str = "ridehail_http_requests_shed_total";
pub const RECORDS_CONSUMED: &str = "ridehail_records_consumed_total";
pub const RECORDS_RETRIED: &str = "ridehail_records_retried_total";
pub const DEAD_LETTERS: &str = "ridehail_dead_letters_total";
pub const PROCESSING_DURATION: &str = "ridehail_record_processing_duration_seconds";
pub const CONSUMER_LAG: &str = "ridehail_consumer_lag";
pub const RECORDS_PUBLISHED: &str = "ridehail_records_published_total";
pub const PUBLISH_DURATION: &str = "ridehail_publish_duration_seconds";
pub const PORT_DURATION: &str = "ridehail_port_call_duration_seconds";
pub const PORT_ERRORS: &str = "ridehail_port_call_errors_total";
pub const BREAKER_OPEN: &str = "ridehail_circuit_breaker_open";
/// Recorded by the Redis read-through caches (`ridehail-redis`): `view`, and `result` one of `hit`,
/// `miss`, `fallback` (Redis unreachable) or `stale` (an aged entry served while the store is down).
pub const CACHE_READS: &str = "ridehail_cache_reads_total";
pub const RIDES_REQUESTED: &str = "ridehail_rides_requested_total";
pub const RIDES_MATCHED: &str = "ridehail_rides_matched_total";
pub const RIDES_COMPLETED: &str = "ridehail_rides_completed_total";
pub const RIDES_CANCELLED: &str = "ridehail_rides_cancelled_total";
pub const RIDES_EXPIRED: &str = "ridehail_rides_expired_total";
pub const TIME_TO_MATCH: &str = "ridehail_time_to_match_seconds";
pub const FARE: &str = "ridehail_fare_minor";
pub const SURGE: &str = "ridehail_surge_bps";
pub const DRIVERS_ONLINE: &str = "ridehail_drivers_online";
pub const LOCATIONS_REPORTED: &str = "ridehail_driver_locations_reported_total";

/// The `# HELP` lines (after the recorder is installed: before it they would go nowhere).
pub(crate) fn describe() {
    describe_counter!(LOCATIONS_REPORTED, "Driver location pings recorded in the geo index");
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by method, route template and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "Time to answer an HTTP request, by method and route template");
    describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being handled now");
    describe_counter!(HTTP_SHED, "HTTP requests refused at once because the edge was full, by reason");
    describe_counter!(RECORDS_CONSUMED, "Records finished by a consumer group, by topic and outcome");
    describe_counter!(RECORDS_RETRIED, "Attempts at a record that failed and were retried, by topic and why");
    describe_counter!(DEAD_LETTERS, "Records written to the dead-letter topic, by source topic and kind");
    describe_histogram!(PROCESSING_DURATION, Unit::Seconds, "Time from a record's first attempt to its end");
    describe_gauge!(CONSUMER_LAG, "Records published to a partition and not yet finished by the group");
    describe_counter!(RECORDS_PUBLISHED, "Records published, by topic");
    describe_histogram!(PUBLISH_DURATION, Unit::Seconds, "Time for a publish to be acknowledged, by topic");
    describe_histogram!(PORT_DURATION, Unit::Seconds, "Time of one call to a port, by port, operation and engine");
    describe_counter!(PORT_ERRORS, "Port calls that failed, by port, operation, engine and kind");
    describe_gauge!(BREAKER_OPEN, "1 while the port's circuit breaker is open");
    describe_counter!(CACHE_READS, "Reads of a cached view, by view and result (hit, miss, fallback, stale)");
    describe_counter!(RIDES_REQUESTED, "Rides requested");
    describe_counter!(RIDES_MATCHED, "Rides a driver accepted");
    describe_counter!(RIDES_COMPLETED, "Rides completed");
    describe_counter!(RIDES_CANCELLED, "Rides cancelled, by who cancelled");
    describe_counter!(RIDES_EXPIRED, "Rides no driver took in time");
    describe_histogram!(TIME_TO_MATCH, Unit::Seconds, "Time from a ride's request to a driver accepting it");
    describe_histogram!(FARE, "Fares of completed rides, in minor units of their currency");
    describe_histogram!(SURGE, "Surge of each requested ride, in basis points (10000 = 1.0x)");
    describe_gauge!(DRIVERS_ONLINE, "Drivers online now");
}

/// One answered HTTP request (`route`: the route's template).
pub fn http_request(method: String, route: String, status: u16, took: Duration) {
    histogram!(HTTP_DURATION, "method" => method.clone(), "route" => route.clone()).record(took.as_secs_f64());
    counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status.to_string()).increment(1);
}

/// A request refused at once: `overloaded` (too many in flight) or `rate_limited`.
pub fn http_shed(reason: &'static str) {
    counter!(HTTP_SHED, "reason" => reason).increment(1);
}

/// One call of a port: its duration, and its error (`Some(true)`: the dependency was unavailable).
pub(crate) fn port_call(
    port: &'static str,
    operation: &'static str,
    backend: &'static str,
    took: Duration,
    error: Option<bool>,
) {
    histogram!(PORT_DURATION, "port" => port, "operation" => operation, "backend" => backend)
        .record(took.as_secs_f64());
    if let Some(unavailable) = error {
        let kind = if unavailable { "unavailable" } else { "other" };
        counter!(PORT_ERRORS, "port" => port, "operation" => operation, "backend" => backend, "kind" => kind)
            .increment(1);
    }
}

pub(crate) fn breaker_state(port: &'static str, open: bool) {
    gauge!(BREAKER_OPEN, "port" => port).set(if open { 1.0 } else { 0.0 });
}

pub(crate) fn published(topic: &str, count: usize, took: Duration, ok: bool) {
    if ok {
        counter!(RECORDS_PUBLISHED, "topic" => topic.to_owned()).increment(count as u64);
    }
    histogram!(PUBLISH_DURATION, "topic" => topic.to_owned()).record(took.as_secs_f64());
}

/// How a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordEnd {
    Processed,
    DeadLettered { poison: bool },
}

pub(crate) fn record_finished(topic: &str, group: &str, end: RecordEnd, took: Duration) {
    let outcome = match end {
        RecordEnd::Processed => "processed",
        RecordEnd::DeadLettered { .. } => "dead_lettered",
    };
    counter!(RECORDS_CONSUMED, "topic" => topic.to_owned(), "group" => group.to_owned(), "outcome" => outcome)
        .increment(1);
    if let RecordEnd::DeadLettered { poison } = end {
        let kind = if poison { "poison" } else { "failed" };
        counter!(DEAD_LETTERS, "topic" => topic.to_owned(), "group" => group.to_owned(), "kind" => kind).increment(1);
    }
    histogram!(PROCESSING_DURATION, "topic" => topic.to_owned(), "group" => group.to_owned())
        .record(took.as_secs_f64());
}

pub(crate) fn record_retried(topic: &str, group: &str, reason: &'static str) {
    counter!(RECORDS_RETRIED, "topic" => topic.to_owned(), "group" => group.to_owned(), "reason" => reason)
        .increment(1);
}

pub(crate) fn lag(topic: &str, partition: u32, group: &str, lag: u64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string(), "group" => group.to_owned())
        .set(lag as f64);
}

/// What the ride domain reports as its events are appended (business metrics).
pub mod locations {
    use super::*;

    pub fn reported() {
        counter!(LOCATIONS_REPORTED).increment(1);
    }
}

pub mod rides {
    use super::*;

    pub fn requested(surge_bps: u32) {
        counter!(RIDES_REQUESTED).increment(1);
        histogram!(SURGE).record(f64::from(surge_bps));
    }

    pub fn matched(time_to_match: Option<Duration>) {
        counter!(RIDES_MATCHED).increment(1);
        if let Some(took) = time_to_match {
            histogram!(TIME_TO_MATCH).record(took.as_secs_f64());
        }
    }

    /// A completed ride and its fare, in minor units of `currency`.
    pub fn completed(fare_minor: i64, currency: &str) {
        counter!(RIDES_COMPLETED).increment(1);
        histogram!(FARE, "currency" => currency.to_owned()).record(fare_minor as f64);
    }

    /// `by`: `rider`, `driver` or `system`.
    pub fn cancelled(by: &'static str) {
        counter!(RIDES_CANCELLED, "by" => by).increment(1);
    }

    pub fn expired() {
        counter!(RIDES_EXPIRED).increment(1);
    }

    pub fn drivers_online(count: u64) {
        gauge!(DRIVERS_ONLINE).set(count as f64);
    }
}
