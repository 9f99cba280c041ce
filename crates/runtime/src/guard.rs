//! What every call of a port goes through: a client span and its metrics (every engine, the
//! embedded one included), and around an outside dependency a deadline and a circuit breaker.
//!
//! Each port of a [`Backend`] is wrapped in a decorator ([`guarded`]). On a production engine
//! (MongoDB, Redis, Kafka) it gives every call a deadline and passes it through that port's
//! breaker (`tower-resilience-circuitbreaker`): when too many calls fail for want of the dependency
//! (or are too slow), the breaker opens and further calls fail at once as unavailable, which the
//! edge answers with `503` + `Retry-After` and the workers wait out; after `open_ms` a few probe
//! calls go through, and the breaker closes when they succeed. Readiness pings through the breakers,
//! so an open breaker shows as a dependency down.
//!
//! Only unavailability counts against a breaker: corrupt data or a conflict is an answer, not an
//! outage.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use ridehail_events::{CommandId, GeoPoint, RideId, UserId, WireEvent};
use ridehail_ports::{
    Admission, AppendError, Backend, BusError, Candidate, CommandStatus, CommandStatusStore, Credentials,
    DriverLocator, EventStore, Fix, IdempotencyClaim, IdempotencyStore, Limiter, LockoutPolicy, MessageBus,
    OutgoingMessage, Rate, ReadAllPage, RideQuery, RideView, RideViews, Snapshot, StartFrom, StoreError, StoreResult,
    StoredResponse, Subscription, Timer, TimerStore, UserProfile, UserViews,
};
use serde::Deserialize;
use tower::{Layer as _, ServiceExt as _};
use tower_resilience_circuitbreaker::{
    CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState, FailureClassifier,
};
use tracing::Instrument as _;

/// Deadline and breaker of one kind of dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// A call not answered within this is abandoned as unavailable.
    pub timeout_ms: u64,
    /// The breaker opens when this percentage of the calls in its window failed…
    pub failure_rate_percent: u32,
    /// …over the calls of the last `window_ms`, once at least `minimum_calls` were made in it.
    pub window_ms: u64,
    pub minimum_calls: usize,
    /// Calls slower than this count as slow; `slow_call_rate_percent` of them in the window opens it
    /// too.
    pub slow_call_ms: u64,
    pub slow_call_rate_percent: u32,
    /// How long it stays open before letting `half_open_calls` probes through.
    pub open_ms: u64,
    pub half_open_calls: usize,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 3_000,
            failure_rate_percent: 50,
            window_ms: 10_000,
            minimum_calls: 10,
            slow_call_ms: 1_000,
            slow_call_rate_percent: 80,
            open_ms: 5_000,
            half_open_calls: 3,
        }
    }
}

/// The guards of one deployment, per kind of dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceSettings {
    /// The event store, the read models and the timers (MongoDB).
    pub store: GuardSettings,
    /// The hot state (Redis): geo index, command status, idempotency keys, limits.
    pub hot_store: GuardSettings,
    /// Publishing on the bus (Kafka): a publish waits for every acknowledgement.
    pub bus: GuardSettings,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        Self {
            store: GuardSettings::default(),
            hot_store: GuardSettings { timeout_ms: 1_000, slow_call_ms: 500, ..GuardSettings::default() },
            bus: GuardSettings { timeout_ms: 15_000, slow_call_ms: 5_000, ..GuardSettings::default() },
        }
    }
}

/// An error type of a port, as the guard sees it.
pub trait GuardError: std::fmt::Display + Send + 'static {
    /// Whether it says the dependency is unavailable (what a breaker counts).
    fn is_unavailable(&self) -> bool;
    /// The error of a call the guard cut short or refused.
    fn unavailable(why: String) -> Self;
}

impl GuardError for StoreError {
    fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
    fn unavailable(why: String) -> Self {
        Self::Unavailable(anyhow::anyhow!(why))
    }
}

impl GuardError for AppendError {
    fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
    fn unavailable(why: String) -> Self {
        Self::Unavailable(anyhow::anyhow!(why))
    }
}

impl GuardError for BusError {
    fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
    fn unavailable(why: String) -> Self {
        Self::Unavailable(anyhow::anyhow!(why))
    }
}

/// Counts only unavailability as a failure.
#[derive(Debug, Clone, Copy)]
pub struct Unavailability;

impl<Res, E: GuardError> FailureClassifier<Res, E> for Unavailability {
    fn classify(&self, result: &Result<Res, E>) -> bool {
        result.as_ref().err().is_some_and(GuardError::is_unavailable)
    }
}

/// What every call of one port goes through: a span, its metrics, and — on a production engine — a
/// deadline and a breaker.
#[derive(Clone)]
pub struct Guard {
    name: &'static str,
    /// The engine behind the port (`mongodb`, `redis`, `kafka`, `sqlite`), as spans and metrics name it.
    backend: &'static str,
    protection: Option<Protection>,
}

/// A deadline and a breaker.
#[derive(Clone)]
struct Protection {
    timeout: Duration,
    layer: CircuitBreakerLayer<Unavailability>,
    handle: CircuitBreakerHandle<Unavailability>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard with a deadline and a breaker as `settings` say.
    pub fn new(name: &'static str, backend: &'static str, settings: &GuardSettings) -> anyhow::Result<Self> {
        let (layer, handle) = CircuitBreakerLayer::builder()
            .name(name)
            .failure_rate_threshold(f64::from(settings.failure_rate_percent.clamp(1, 100)) / 100.0)
            .sliding_window_type(tower_resilience_circuitbreaker::SlidingWindowType::TimeBased)
            .sliding_window_duration(Duration::from_millis(settings.window_ms.max(1)))
            .minimum_number_of_calls(settings.minimum_calls.max(1))
            .slow_call_duration_threshold(Duration::from_millis(settings.slow_call_ms.max(1)))
            .slow_call_rate_threshold(f64::from(settings.slow_call_rate_percent.clamp(1, 100)) / 100.0)
            .wait_duration_in_open(Duration::from_millis(settings.open_ms.max(1)))
            .permitted_calls_in_half_open(settings.half_open_calls.max(1))
            .on_state_transition(move |from, to| {
                crate::metrics::breaker_state(name, to == CircuitState::Open);
                match to {
                    CircuitState::Open => tracing::warn!(dependency = name, ?from, "circuit breaker open"),
                    _ => tracing::info!(dependency = name, ?from, ?to, "circuit breaker state"),
                }
            })
            .failure_classifier_type(Unavailability)
            .build_with_handle()
            .map_err(|e| anyhow::anyhow!("circuit breaker of {name}: {e:?}"))?;
        crate::metrics::breaker_state(name, false);
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        Ok(Self { name, backend, protection: Some(Protection { timeout, layer, handle }) })
    }

    /// A guard that only observes (spans and metrics): for local files, which need no breaker.
    pub fn observing(name: &'static str, backend: &'static str) -> Self {
        Self { name, backend, protection: None }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The breaker's state (`Closed` when there is none).
    pub fn state(&self) -> CircuitState {
        self.protection.as_ref().map_or(CircuitState::Closed, |p| p.handle.state())
    }

    /// Runs `call` (operation `operation` of the port) in a client span, timed into the port's
    /// metrics, under the deadline and through the breaker. (A plain function returning a boxed
    /// future: built inside the ports' `async_trait` methods, the same code trips rustc's
    /// higher-ranked `Send` check.)
    pub fn call<T, E>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, E>>
    where
        T: Send + 'static,
        E: GuardError,
    {
        // Only calls made for a request or a record are traced: a timer poll or a gauge reading on
        // its own would be a trace of one span, many times a second.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
            "port",
            otel.name = %format!("{} {operation}", self.name),
            otel.kind = "client",
            ridehail.port = self.name,
            ridehail.operation = operation,
            db.system.name = self.backend,
            )
        };
        Box::pin(self.metered(operation, self.protect(call)).instrument(span))
    }

    /// `call`, timed into the port's metrics.
    fn metered<T, E>(
        &self,
        operation: &'static str,
        call: BoxFuture<'static, Result<T, E>>,
    ) -> impl Future<Output = Result<T, E>> + Send + 'static
    where
        T: Send + 'static,
        E: GuardError,
    {
        let (port, backend) = (self.name, self.backend);
        async move {
            let started = std::time::Instant::now();
            let result = call.await;
            crate::metrics::port_call(
                port,
                operation,
                backend,
                started.elapsed(),
                result.as_ref().err().map(|e| e.is_unavailable()),
            );
            result
        }
    }

    /// `call` under the deadline, through the breaker (as it is when this guard only observes).
    fn protect<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, E>>
    where
        T: Send + 'static,
        E: GuardError,
    {
        let Some(protection) = &self.protection else { return Box::pin(call) };
        let (name, timeout) = (self.name, protection.timeout);
        let timed: BoxFuture<'static, Result<T, E>> = Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(E::unavailable(format!("{name}: no answer within {} ms", timeout.as_millis()))),
            }
        });
        let service = protection.layer.layer(tower::service_fn(run::<T, E>));
        Box::pin(async move {
            match service.oneshot(Call(timed)).await {
                Ok(value) => Ok(value),
                Err(CircuitBreakerError::OpenCircuit) => Err(E::unavailable(format!("{name}: circuit breaker open"))),
                Err(CircuitBreakerError::Inner(e)) => Err(e),
            }
        })
    }
}

/// A call, as the request of the service under the breaker (a named type: with a bare boxed future
/// in its signature, the service's future fails rustc's higher-ranked `Send` check).
struct Call<T, E>(BoxFuture<'static, Result<T, E>>);

/// The service under the breaker: runs the call it is given.
fn run<T, E>(call: Call<T, E>) -> BoxFuture<'static, Result<T, E>> {
    call.0
}

/// Wraps every port of `backend` in its guard: each call gets a span and its metrics, and the ports
/// that `which` selects (those on production engines) a deadline and a breaker each.
pub fn guarded(
    backend: Backend,
    settings: &ResilienceSettings,
    which: Wrap,
    engines: Engines,
) -> anyhow::Result<Backend> {
    let Backend { bus, events, rides, users, drivers, commands, idempotency, limiter, timers, projections, clock } =
        backend;
    let guard = |name: &'static str, engine: &'static str, protect: bool, settings: &GuardSettings| {
        if protect { Guard::new(name, engine, settings) } else { Ok(Guard::observing(name, engine)) }
    };
    let (s, h, b) = (&settings.store, &settings.hot_store, &settings.bus);
    let (store, hot) = (which.store, which.hot);
    Ok(Backend {
        bus: Arc::new(GuardedBus { inner: bus, guard: guard("bus", engines.bus, which.bus, b)? }),
        events: Arc::new(GuardedEvents { inner: events, guard: guard("event_store", engines.store, store, s)? }),
        rides: Arc::new(GuardedRides { inner: rides, guard: guard("ride_views", engines.store, store, s)? }),
        users: Arc::new(GuardedUsers { inner: users, guard: guard("user_views", engines.store, store, s)? }),
        timers: Arc::new(GuardedTimers { inner: timers, guard: guard("timers", engines.store, store, s)? }),
        drivers: Arc::new(GuardedDrivers { inner: drivers, guard: guard("driver_locator", engines.hot, hot, h)? }),
        commands: Arc::new(GuardedCommands { inner: commands, guard: guard("command_status", engines.hot, hot, h)? }),
        idempotency: Arc::new(GuardedIdempotency {
            inner: idempotency,
            guard: guard("idempotency", engines.hot, hot, h)?,
        }),
        limiter: Arc::new(GuardedLimiter { inner: limiter, guard: guard("limiter", engines.hot, hot, h)? }),
        // Used by rebuilds only, which retry and report on their own.
        projections,
        clock,
    })
}

/// Which groups of ports get a deadline and a breaker (the embedded ones are local files: they need
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wrap {
    pub bus: bool,
    pub store: bool,
    pub hot: bool,
}

/// The engine behind each group of ports, as spans and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engines {
    pub bus: &'static str,
    pub store: &'static str,
    pub hot: &'static str,
}

impl Engines {
    /// Everything embedded (SQLite files).
    pub const EMBEDDED: Self = Self { bus: "sqlite", store: "sqlite", hot: "sqlite" };
}

/// Calls `$method` of the wrapped port under the guard, with owned copies of its arguments.
macro_rules! through {
    ($self:ident, $operation:literal, |$inner:ident| $call:expr) => {{
        let $inner = $self.inner.clone();
        $self.guard.call($operation, async move { $call.await }).await
    }};
}

#[derive(Debug)]
struct GuardedBus {
    inner: Arc<dyn MessageBus>,
    guard: Guard,
}

#[async_trait]
impl MessageBus for GuardedBus {
    /// In a producer span (`send {topic}`) whose context every record carries in its headers.
    async fn publish(&self, topic: &str, mut messages: Vec<OutgoingMessage>) -> Result<(), BusError> {
        let span = tracing::info_span!(
            "send",
            otel.name = %format!("send {topic}"),
            otel.kind = "producer",
            messaging.system = self.inner.system(),
            messaging.destination.name = topic,
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.batch.message_count = messages.len() as i64,
        );
        // A record created in a span of its own (a deferred event: its command's) keeps that context.
        for message in messages.iter_mut().filter(|m| !crate::propagation::carries_context(&m.headers)) {
            crate::propagation::inject(&span, &mut message.headers);
        }
        let (count, owned_topic, bus) = (messages.len(), topic.to_owned(), self.inner.clone());
        let sent = self.guard.protect(async move { bus.publish(&owned_topic, messages).await });
        let started = std::time::Instant::now();
        let result = self.guard.metered("publish", sent).instrument(span).await;
        crate::metrics::published(topic, count, started.elapsed(), result.is_ok());
        result
    }
    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        start: StartFrom,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(group, topics, start).await
    }
    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.inner.partitions(topic).await
    }
    async fn ping(&self) -> Result<(), BusError> {
        through!(self, "ping", |bus| bus.ping())
    }
    fn system(&self) -> &'static str {
        self.inner.system()
    }
}

#[derive(Debug)]
struct GuardedEvents {
    inner: Arc<dyn EventStore>,
    guard: Guard,
}

#[async_trait]
impl EventStore for GuardedEvents {
    async fn append(&self, expected_version: u64, events: &[WireEvent]) -> Result<(), AppendError> {
        let events = events.to_vec();
        through!(self, "append", |store| store.append(expected_version, &events))
    }
    async fn read_stream(&self, aggregate_id: uuid::Uuid) -> StoreResult<Vec<WireEvent>> {
        through!(self, "read_stream", |store| store.read_stream(aggregate_id))
    }
    async fn read_stream_after(&self, aggregate_id: uuid::Uuid, after: u64) -> StoreResult<Vec<WireEvent>> {
        through!(self, "read_stream_after", |store| store.read_stream_after(aggregate_id, after))
    }
    async fn load_snapshot(&self, stream: uuid::Uuid) -> StoreResult<Option<Snapshot>> {
        through!(self, "load_snapshot", |store| store.load_snapshot(stream))
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> StoreResult<()> {
        let snapshot = snapshot.clone();
        through!(self, "save_snapshot", |store| store.save_snapshot(&snapshot))
    }
    async fn read_all(&self, after: Option<&str>, limit: usize) -> StoreResult<ReadAllPage> {
        let after = after.map(str::to_owned);
        through!(self, "read_all", |store| store.read_all(after.as_deref(), limit))
    }
    async fn head(&self) -> StoreResult<u64> {
        through!(self, "head", |store| store.head())
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |store| store.ping())
    }
}

#[derive(Debug)]
struct GuardedRides {
    inner: Arc<dyn RideViews>,
    guard: Guard,
}

#[async_trait]
impl RideViews for GuardedRides {
    async fn upsert(&self, view: &RideView) -> StoreResult<bool> {
        let view = view.clone();
        through!(self, "upsert", |rides| rides.upsert(&view))
    }
    async fn upsert_many(&self, views: &[RideView]) -> StoreResult<u64> {
        let views = views.to_vec();
        through!(self, "upsert_many", |rides| rides.upsert_many(&views))
    }
    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>> {
        through!(self, "get", |rides| rides.get(ride_id))
    }
    async fn get_or_stale(&self, ride_id: RideId) -> StoreResult<Option<(RideView, Option<Duration>)>> {
        through!(self, "get_or_stale", |rides| rides.get_or_stale(ride_id))
    }
    async fn list(&self, query: &RideQuery) -> StoreResult<Vec<RideView>> {
        let query = query.clone();
        through!(self, "list", |rides| rides.list(&query))
    }
    async fn count_waiting_in_cell(&self, cell: &str) -> StoreResult<u64> {
        let cell = cell.to_owned();
        through!(self, "count_waiting_in_cell", |rides| rides.count_waiting_in_cell(&cell))
    }
    async fn waiting_since(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<Vec<RideView>> {
        through!(self, "waiting_since", |rides| rides.waiting_since(before, limit))
    }
    async fn forget_cached(&self) -> StoreResult<()> {
        through!(self, "forget_cached", |rides| rides.forget_cached())
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |rides| rides.ping())
    }
}

#[derive(Debug)]
struct GuardedUsers {
    inner: Arc<dyn UserViews>,
    guard: Guard,
}

#[async_trait]
impl UserViews for GuardedUsers {
    async fn upsert_profile(&self, profile: &UserProfile) -> StoreResult<bool> {
        let profile = profile.clone();
        through!(self, "upsert_profile", |users| users.upsert_profile(&profile))
    }
    async fn profile(&self, user_id: UserId) -> StoreResult<Option<UserProfile>> {
        through!(self, "profile", |users| users.profile(user_id))
    }
    async fn upsert_credentials(&self, credentials: &Credentials) -> StoreResult<bool> {
        let credentials = credentials.clone();
        through!(self, "upsert_credentials", |users| users.upsert_credentials(&credentials))
    }
    async fn credentials_by_email(&self, email_normalised: &str) -> StoreResult<Option<Credentials>> {
        let email = email_normalised.to_owned();
        through!(self, "credentials_by_email", |users| users.credentials_by_email(&email))
    }
    async fn forget_cached(&self) -> StoreResult<()> {
        through!(self, "forget_cached", |users| users.forget_cached())
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |users| users.ping())
    }
}

#[derive(Debug)]
struct GuardedTimers {
    inner: Arc<dyn TimerStore>,
    guard: Guard,
}

#[async_trait]
impl TimerStore for GuardedTimers {
    async fn schedule(&self, timer: &Timer) -> StoreResult<()> {
        let timer = timer.clone();
        through!(self, "schedule", |timers| timers.schedule(&timer))
    }
    async fn cancel(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        through!(self, "cancel", |timers| timers.cancel(&id))
    }
    async fn due(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Timer>> {
        through!(self, "due", |timers| timers.due(now, limit))
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |timers| timers.ping())
    }
}

#[derive(Debug)]
struct GuardedDrivers {
    inner: Arc<dyn DriverLocator>,
    guard: Guard,
}

#[async_trait]
impl DriverLocator for GuardedDrivers {
    async fn update_driver(&self, driver_id: UserId, fix: Option<Fix>, online: bool, version: u64) -> StoreResult<()> {
        through!(self, "update_driver", |drivers| drivers.update_driver(driver_id, fix, online, version))
    }
    async fn report_location(&self, driver_id: UserId, fix: Fix) -> StoreResult<bool> {
        through!(self, "report_location", |drivers| drivers.report_location(driver_id, fix))
    }
    async fn reserve_nearest(
        &self,
        at: GeoPoint,
        radius_m: u32,
        exclude: &[UserId],
        ride_id: RideId,
        hold_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Candidate>> {
        let exclude = exclude.to_vec();
        through!(self, "reserve_nearest", |drivers| drivers
            .reserve_nearest(at, radius_m, &exclude, ride_id, hold_until, now))
    }
    async fn hold(
        &self,
        driver_id: UserId,
        ride_id: RideId,
        until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        through!(self, "hold", |drivers| drivers.hold(driver_id, ride_id, until, now))
    }
    async fn release(&self, driver_id: UserId, ride_id: RideId) -> StoreResult<()> {
        through!(self, "release", |drivers| drivers.release(driver_id, ride_id))
    }
    async fn available_in_cell(&self, cell: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let cell = cell.to_owned();
        through!(self, "available_in_cell", |drivers| drivers.available_in_cell(&cell, now))
    }
    async fn online(&self) -> StoreResult<u64> {
        through!(self, "online", |drivers| drivers.online())
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |drivers| drivers.ping())
    }
}

#[derive(Debug)]
struct GuardedCommands {
    inner: Arc<dyn CommandStatusStore>,
    guard: Guard,
}

#[async_trait]
impl CommandStatusStore for GuardedCommands {
    async fn record(&self, status: &CommandStatus) -> StoreResult<()> {
        let status = status.clone();
        through!(self, "record", |commands| commands.record(&status))
    }
    async fn record_many(&self, statuses: &[CommandStatus]) -> StoreResult<()> {
        let statuses = statuses.to_vec();
        through!(self, "record_many", |commands| commands.record_many(&statuses))
    }
    async fn get(&self, command_id: CommandId) -> StoreResult<Option<CommandStatus>> {
        through!(self, "get", |commands| commands.get(command_id))
    }
    /// Not through the breaker: a wait is long by design, and its reads are the adapter's own.
    async fn wait_final(&self, command_id: CommandId, timeout: Duration) -> StoreResult<Option<CommandStatus>> {
        self.inner.wait_final(command_id, timeout).await
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |commands| commands.ping())
    }
}

#[derive(Debug)]
struct GuardedIdempotency {
    inner: Arc<dyn IdempotencyStore>,
    guard: Guard,
}

#[async_trait]
impl IdempotencyStore for GuardedIdempotency {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> StoreResult<IdempotencyClaim> {
        let (scope, key, fingerprint) = (scope.to_owned(), key.to_owned(), fingerprint.to_owned());
        through!(self, "claim", |store| store.claim(&scope, &key, &fingerprint, now, ttl))
    }
    async fn complete(&self, scope: &str, key: &str, response: &StoredResponse) -> StoreResult<()> {
        let (scope, key, response) = (scope.to_owned(), key.to_owned(), response.clone());
        through!(self, "complete", |store| store.complete(&scope, &key, &response))
    }
    async fn release(&self, scope: &str, key: &str) -> StoreResult<()> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        through!(self, "release", |store| store.release(&scope, &key))
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |store| store.ping())
    }
}

#[derive(Debug)]
struct GuardedLimiter {
    inner: Arc<dyn Limiter>,
    guard: Guard,
}

#[async_trait]
impl Limiter for GuardedLimiter {
    async fn admit(&self, key: &str, rate: Rate) -> StoreResult<Admission> {
        let key = key.to_owned();
        through!(self, "admit", |limiter| limiter.admit(&key, rate))
    }
    async fn admit_all(&self, checks: &[(String, Rate)]) -> StoreResult<Admission> {
        let checks = checks.to_vec();
        through!(self, "admit_all", |limiter| limiter.admit_all(&checks))
    }
    async fn locked_for(&self, key: &str) -> StoreResult<Option<Duration>> {
        let key = key.to_owned();
        through!(self, "locked_for", |limiter| limiter.locked_for(&key))
    }
    async fn record_failure(&self, key: &str, policy: &LockoutPolicy) -> StoreResult<Option<Duration>> {
        let (key, policy) = (key.to_owned(), *policy);
        through!(self, "record_failure", |limiter| limiter.record_failure(&key, &policy))
    }
    async fn clear_failures(&self, key: &str) -> StoreResult<()> {
        let key = key.to_owned();
        through!(self, "clear_failures", |limiter| limiter.clear_failures(&key))
    }
    async fn ping(&self) -> StoreResult<()> {
        through!(self, "ping", |limiter| limiter.ping())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GuardSettings {
        GuardSettings {
            timeout_ms: 50,
            window_ms: 1_000,
            minimum_calls: 4,
            open_ms: 200,
            half_open_calls: 1,
            ..GuardSettings::default()
        }
    }

    #[tokio::test]
    async fn failures_open_the_breaker_which_then_refuses_at_once_and_closes_after_a_good_probe() {
        let guard = Guard::new("test", "test", &settings()).unwrap();
        for _ in 0..4 {
            let failed: StoreResult<()> =
                guard.call("op", async { Err(StoreError::unavailable(anyhow::anyhow!("down"))) }).await;
            assert!(failed.is_err());
        }
        assert_eq!(guard.state(), CircuitState::Open);
        let started = std::time::Instant::now();
        let refused: StoreResult<u32> = guard.call("op", async { Ok(1) }).await;
        assert!(refused.unwrap_err().to_string().contains("circuit breaker open"));
        assert!(started.elapsed() < Duration::from_millis(20), "refused at once");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let probe: StoreResult<u32> = guard.call("op", async { Ok(7) }).await;
        assert_eq!(probe.unwrap(), 7);
        assert_eq!(guard.state(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_unavailable_and_answers_are_not_outages() {
        let guard = Guard::new("test", "test", &settings()).unwrap();
        let slow: StoreResult<()> = guard
            .call("op", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert!(matches!(slow, Err(StoreError::Unavailable(_))), "{slow:?}");
        for _ in 0..10 {
            let corrupt: StoreResult<()> = guard.call("op", async { Err(StoreError::Corrupt("bad".into())) }).await;
            assert!(corrupt.is_err());
        }
        assert_eq!(guard.state(), CircuitState::Closed, "corrupt data is an answer, not an outage");
    }
}
