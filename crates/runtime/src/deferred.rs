//! The effects a run of records leaves for its end: written once per run, not once per command.
//!
//! A partition worker handles the records it has queued (up to [`crate::consumer::ConsumerConfig::max_run`])
//! one after the other. What their commands must make durable before any of them is let go but that
//! nothing later in the run reads back — ride views, published events, command outcomes — goes into one
//! [`Deferred`], which the worker flushes with one batch call per port (one SQLite transaction, one
//! MongoDB `bulkWrite`, one Redis pipeline, one produce call whose deliveries are awaited together)
//! before it commits the run's offsets. The appends and reservations are not deferred: the next command
//! of the same stream must see them, and they are where conflicts are found.
//!
//! At-least-once holds as before: a crash between a run's appends and its flush redelivers the run's
//! records, the executor finds their events already appended and does their effects again.
//! docs/throughput.md has the design and the measurements.

use std::collections::HashSet;
use std::hash::Hash;

use ridehail_events::{EventEnvelope, Message};
use ridehail_ports::{Backend, CommandStatus, OutgoingMessage, RideView};

use crate::executor::ProcessError;
use crate::records::event_record;

/// The deferred effects of the records handled since the last flush, in the order they were made.
#[derive(Debug, Default)]
pub struct Deferred {
    rides: Vec<RideView>,
    records: Vec<(String, OutgoingMessage)>,
    statuses: Vec<CommandStatus>,
}

/// How much a [`Deferred`] held at some point: what [`Deferred::truncate`] goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    rides: usize,
    records: usize,
    statuses: usize,
}

impl Deferred {
    /// Stores `view` at the flush (only the newest of a ride's views deferred in one run is written).
    pub fn upsert_ride(&mut self, view: &RideView) {
        self.rides.push(view.clone());
    }

    /// Publishes the public ones among `events` on `topic` at the flush, after what was deferred
    /// before. Each record carries the trace context of the span deferring it (the command's), so a
    /// consumer continues the command's trace whichever run published it.
    pub fn publish_events<E: Message>(&mut self, topic: &str, events: &[EventEnvelope<E>]) {
        let span = tracing::info_span!(
            "create",
            otel.name = %format!("create {topic}"),
            otel.kind = "producer",
            messaging.operation.type = "create",
            messaging.destination.name = topic,
        );
        for event in events.iter().filter(|e| e.event.is_public()) {
            let mut record = event_record(&event.to_wire());
            crate::propagation::inject(&span, &mut record.headers);
            self.records.push((topic.to_owned(), record));
        }
    }

    /// Records the command's outcome at the flush, after its views and events.
    pub fn record(&mut self, status: CommandStatus) {
        self.statuses.push(status);
    }

    pub fn is_empty(&self) -> bool {
        self.rides.is_empty() && self.records.is_empty() && self.statuses.is_empty()
    }

    /// What is deferred now: a failed attempt goes back to it ([`Deferred::truncate`]), so its retry
    /// does not defer the same effects twice.
    pub fn mark(&self) -> Mark {
        Mark { rides: self.rides.len(), records: self.records.len(), statuses: self.statuses.len() }
    }

    /// Drops what was deferred after `mark`.
    pub fn truncate(&mut self, mark: Mark) {
        self.rides.truncate(mark.rides);
        self.records.truncate(mark.records);
        self.statuses.truncate(mark.statuses);
    }

    /// Writes everything deferred through `backend`'s ports, one batch call per port (and topic):
    /// the views, then the events, then the outcomes, as one command's effects were ordered. What
    /// was written is forgotten at once, so after a failure a second flush writes only the rest
    /// (every write is idempotent anyway).
    pub async fn flush(&mut self, backend: &Backend) -> Result<(), ProcessError> {
        if !self.rides.is_empty() {
            let views: Vec<RideView> = last_per_key(&self.rides, |v| v.ride_id).into_iter().cloned().collect();
            backend.rides.upsert_many(&views).await?;
            self.rides.clear();
        }
        // One publish per topic, in the order the topics were first deferred to.
        while let Some((topic, _)) = self.records.first() {
            let topic = topic.clone();
            let records: Vec<OutgoingMessage> =
                self.records.iter().filter(|(t, _)| *t == topic).map(|(_, r)| r.clone()).collect();
            backend.bus.publish(&topic, records).await?;
            self.records.retain(|(t, _)| *t != topic);
        }
        if !self.statuses.is_empty() {
            backend.commands.record_many(&self.statuses).await?;
            self.statuses.clear();
        }
        Ok(())
    }
}

/// The last of `items` for each key, in the order of their last appearance (views only move
/// forward: an earlier view of a ride than one deferred after it would be refused anyway).
fn last_per_key<T, K: Hash + Eq>(items: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut seen = HashSet::with_capacity(items.len());
    let mut last: Vec<&T> = items.iter().rev().filter(|item| seen.insert(key(item))).collect();
    last.reverse();
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_item_of_each_key_is_kept_in_the_order_of_last_appearance() {
        let items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)];
        assert_eq!(last_per_key(&items, |(k, _)| *k), vec![&("b", 1), &("c", 1), &("a", 3)]);
        assert!(last_per_key(&[] as &[(u8, u8)], |(k, _)| *k).is_empty());
    }
}
