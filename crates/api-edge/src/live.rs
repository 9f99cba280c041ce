//! Live ride updates: `GET /v1/rides/{id}/updates` as Server-Sent Events.
//!
//! The event store is what a stream sends: each SSE event is one of the ride's public events, its
//! `id` the event's sequence number in the ride's stream, so a client reconnecting with
//! `Last-Event-ID` gets exactly the events after it, none missed and none twice. What wakes a
//! stream is the bus: every edge process follows the ride event topic from its end (a consumer group
//! of its own, [`RideFeed::follow`]) and wakes the streams of the ride each record is about, so
//! it works with the workers in other processes and with several edges. A stream also looks again
//! every `live_recheck_seconds` in case a wake-up was lost (an edge's feed restarting).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use ridehail_events::ride::RideEvent;
use ridehail_events::{Message as _, UserId, WireEvent};
use ridehail_ports::{IncomingMessage, StartFrom};
use ridehail_runtime::consumer::{ConsumerConfig, HandleError, MessageHandler};
use ridehail_runtime::deferred::Deferred;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::auth::AuthUser;
use crate::error::ApiError;

/// Which rides have open streams on this edge, and the signal that wakes them.
#[derive(Debug, Default)]
pub struct RideFeed {
    rides: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Open streams per user (bounded by `edge.max_streams_per_user`).
    streams: Mutex<HashMap<UserId, usize>>,
}

impl RideFeed {
    /// A receiver woken whenever the ride changes.
    fn watch(&self, ride: Uuid) -> watch::Receiver<u64> {
        let mut rides = self.rides.lock().unwrap_or_else(|e| e.into_inner());
        rides.entry(ride).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Forgets rides nobody watches any more.
    fn forget_unwatched(&self, ride: Uuid) {
        let mut rides = self.rides.lock().unwrap_or_else(|e| e.into_inner());
        if rides.get(&ride).is_some_and(|s| s.receiver_count() == 0) {
            rides.remove(&ride);
        }
    }

    /// The ride changed: wake its streams.
    pub fn changed(&self, ride: Uuid) {
        let rides = self.rides.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = rides.get(&ride) {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// Streams open on this edge (all rides).
    pub fn open_streams(&self) -> usize {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }

    fn admit(self: &Arc<Self>, user: UserId, limit: usize) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let open = streams.entry(user).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(StreamSlot { feed: self.clone(), user })
    }

    /// Follows the ride event topic from its end until `shutdown`, waking the streams of each
    /// record's ride. Its consumer group is this process's own (`edge-live-{uuid}`): every edge sees
    /// every record.
    pub async fn follow(
        self: Arc<Self>,
        bus: Arc<dyn ridehail_ports::MessageBus>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut config =
            ConsumerConfig::new(format!("edge-live-{}", Uuid::new_v4()), &[ridehail_events::topics::RIDE_EVENTS]);
        config.start = StartFrom::Latest;
        config.poll_wait = Duration::from_millis(100);
        // A bus away at start-up (or a subscription lost) is waited out; meanwhile the streams
        // re-check on their own every `live_recheck_seconds`.
        let mut waits = config.unavailable_retry.delays();
        let handler: Arc<dyn MessageHandler> = Arc::new(Waker(self));
        loop {
            match ridehail_runtime::consumer::run(bus.clone(), handler.clone(), config.clone(), shutdown.clone()).await
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let wait = waits.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(
                        error = format!("{e:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "live-update feed stopped; restarting"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }
}

/// One open stream of a user; gives its place back when dropped.
#[derive(Debug)]
struct StreamSlot {
    feed: Arc<RideFeed>,
    user: UserId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.feed.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = streams.get_mut(&self.user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.user);
            }
        }
    }
}

/// The feed's consumer: a ride event record wakes that ride's streams.
struct Waker(Arc<RideFeed>);

#[async_trait]
impl MessageHandler for Waker {
    async fn handle_deferred(&self, message: &IncomingMessage, _: &mut Deferred) -> Result<(), HandleError> {
        if let Ok(ride) = message.key.parse::<Uuid>() {
            self.0.changed(ride);
        }
        Ok(())
    }
}

/// `Last-Event-ID`: the sequence of the last event the client has.
fn last_event_id(headers: &HeaderMap) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(0),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::field("Last-Event-ID", "must be the id of an event of this stream")),
    }
}

/// What a stream holds between events.
struct Cursor {
    state: AppState,
    ride: Uuid,
    after: u64,
    pending: std::collections::VecDeque<WireEvent>,
    changes: watch::Receiver<u64>,
    recheck: Duration,
    _slot: StreamSlot,
}

impl Drop for Cursor {
    fn drop(&mut self) {
        // Let go of this stream's receiver first (fields drop only after this runs), or the ride
        // would still count as watched and stay in the feed for ever.
        drop(std::mem::replace(&mut self.changes, watch::channel(0).1));
        self.state.live.forget_unwatched(self.ride);
    }
}

/// The ride's public events after `after`, oldest first.
async fn events_after(state: &AppState, ride: Uuid, after: u64) -> Result<Vec<WireEvent>, ApiError> {
    let events = state.backend.events.read_stream(ride).await?;
    Ok(events
        .into_iter()
        .filter(|w| w.sequence > after)
        .filter(|w| RideEvent::decode(&w.event_type, w.schema_version, w.payload.clone()).is_ok_and(|e| e.is_public()))
        .collect())
}

fn sse_event(wire: &WireEvent) -> Event {
    let data = serde_json::to_string(wire).unwrap_or_else(|_| "{}".to_owned());
    Event::default().id(wire.sequence.to_string()).event(wire.event_type.clone()).data(data)
}

/// The ride's changes as Server-Sent Events: each event is one of the ride's public events (`event:` its
/// type, `id:` its sequence number, `data:` the event as in `history`), heartbeats as comments.
#[utoipa::path(get, path = "/v1/rides/{id}/updates", tag = "rides", operation_id = "rideUpdates",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The ride id."),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event: the `id` of the last event received."),
    ),
    responses(
        (status = 200, description = "The stream, from the first event (or after `Last-Event-ID`).", body = String, content_type = "text/event-stream"),
        (status = 404, description = "`not_found`: no such ride, or not the caller's to see."),
        (status = 422, description = "`validation_failed`: `Last-Event-ID` is not a sequence number."),
        (status = 429, description = "`too_many_streams`: the caller has as many streams open as allowed."),
    ))]
pub async fn updates(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let ride = crate::routes::rides::own_ride(&state, &id, user).await?;
    let after = last_event_id(&headers)?;
    let slot = state
        .live
        .admit(user.user_id, state.config.max_streams_per_user)
        .ok_or(ApiError::TooManyRequests { code: "too_many_streams", retry_after: Duration::from_secs(5) })?;
    let ride = ride.ride_id.0;
    // Watch before the first read: a change between the two wakes the stream, it is not lost.
    let changes = state.live.watch(ride);
    let recheck = Duration::from_secs(state.config.live_recheck_seconds.max(1));
    let heartbeat = Duration::from_secs(state.config.live_heartbeat_seconds.max(1));
    let cursor = Cursor { state, ride, after, pending: Default::default(), changes, recheck, _slot: slot };
    let stream = futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(wire) = cursor.pending.pop_front() {
                cursor.after = wire.sequence;
                return Some((Ok(sse_event(&wire)), cursor));
            }
            match events_after(&cursor.state, cursor.ride, cursor.after).await {
                Ok(events) if !events.is_empty() => cursor.pending.extend(events),
                Ok(_) => {
                    // Nothing new: wait for a change (or look again after `recheck`); the edge
                    // shutting down ends the stream (the client reconnects elsewhere with its id).
                    tokio::select! {
                        _ = tokio::time::timeout(cursor.recheck, cursor.changes.changed()) => {}
                        _ = cursor.state.shutdown.cancelled() => return None,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "live updates: reading the ride's events failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(sse(stream, heartbeat))
}

/// A stream as SSE with heartbeats (a comment line every `heartbeat`, so that proxies keep it open).
fn sse<S>(stream: S, heartbeat: Duration) -> Sse<axum::response::sse::KeepAliveStream<S>>
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
}

/// `GET /v1/commands/{id}` with `Accept: text/event-stream`: the command's status now, then its
/// final outcome when it comes (then the stream ends).
pub fn command_outcome(
    state: AppState,
    first: ridehail_ports::CommandStatus,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let heartbeat = Duration::from_secs(state.config.live_heartbeat_seconds.max(1));
    let status_event = |s: &ridehail_ports::CommandStatus| {
        Event::default().event("status").data(serde_json::to_string(s).unwrap_or_else(|_| "{}".to_owned()))
    };
    let stream = futures::stream::unfold(Some((state, first, true)), move |step| async move {
        let (state, status, first) = step?;
        if first {
            let done = status.is_final();
            let event = status_event(&status);
            return Some((Ok(event), (!done).then_some((state, status, false))));
        }
        loop {
            let waited = tokio::select! {
                waited = state.backend.commands.wait_final(status.command_id, Duration::from_secs(30)) => waited,
                _ = state.shutdown.cancelled() => return None,
            };
            match waited {
                Ok(Some(done)) if done.is_final() => return Some((Ok(status_event(&done)), None)),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
    sse(stream, heartbeat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_the_limit_of_streams_and_a_closed_one_gives_its_place_back() {
        let feed = Arc::new(RideFeed::default());
        let (user, other) = (UserId::new(), UserId::new());
        let first = feed.admit(user, 2).unwrap();
        let _second = feed.admit(user, 2).unwrap();
        assert!(feed.admit(user, 2).is_none(), "a third stream is refused");
        assert!(feed.admit(other, 2).is_some(), "other users are not affected");
        drop(first);
        assert!(feed.admit(user, 2).is_some(), "a closed stream gives its place back");
    }

    #[tokio::test]
    async fn a_change_wakes_every_stream_of_that_ride_and_no_other() {
        let feed = RideFeed::default();
        let (ride, other) = (Uuid::new_v4(), Uuid::new_v4());
        let (mut a, mut b, mut c) = (feed.watch(ride), feed.watch(ride), feed.watch(other));
        feed.changed(ride);
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
        assert!(!c.has_changed().unwrap());
        a.mark_unchanged();
        b.mark_unchanged();
        c.mark_unchanged();
        drop((a, b));
        feed.forget_unwatched(ride);
        assert!(!feed.rides.lock().unwrap().contains_key(&ride), "nobody watches it any more");
        assert!(feed.rides.lock().unwrap().contains_key(&other));
    }
}
