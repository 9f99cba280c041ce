//! Versioned read models: the catalogue that says which generation of each projection readers use and
//! which ones writers keep up to date, the storage of generations, and the decorators that route the
//! read-model ports to them. The design (why generations, why a lease, what a switch guarantees) is in
//! docs/projections.md; the rebuild itself is `ridehail_runtime::rebuild`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::{RideId, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, StoreResult};
use crate::{Credentials, RideQuery, RideView, RideViews, UserProfile, UserViews};

/// How long a process may go on using the catalogue it read: a switch reaches every reader and writer
/// within this time, and a rebuild waits it out before each step that relies on that.
pub const CATALOGUE_TTL: Duration = Duration::from_secs(1);

/// The read models that can be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// Ride views (blue/green: a new generation is built beside the served one).
    Rides,
    /// Profiles and credentials (blue/green).
    Users,
    /// Driver positions and online flags in the geo index (in place: see docs/projections.md).
    Drivers,
}

impl Projection {
    pub const ALL: [Projection; 3] = [Self::Rides, Self::Users, Self::Drivers];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rides => "rides",
            Self::Users => "users",
            Self::Drivers => "drivers",
        }
    }

    /// Whether a rebuild writes a new generation beside the served one (else it corrects the served
    /// one in place, which is safe because its writes only move forward).
    pub fn has_generations(self) -> bool {
        !matches!(self, Self::Drivers)
    }
}

impl std::fmt::Display for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Projection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown projection {s:?} (rides, users or drivers)"))
    }
}

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GenerationState {
    /// Being built by a rebuild: written (by the rebuild and by every writer), not read.
    Building,
    /// Read and written.
    Active,
    /// Replaced, still written for the readers that have not seen the switch yet.
    Draining,
    /// Neither read nor written; its storage is dropped.
    Retired,
}

/// One copy of a projection's documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Generation {
    /// 0 is the storage every deployment started with (`rides`, `profiles`, …); later ones are
    /// suffixed (`rides_g1`, …).
    pub number: u64,
    /// The projection code's version that built it.
    pub code_version: u32,
    pub state: GenerationState,
    pub since: DateTime<Utc>,
}

/// A rebuild in progress (or interrupted: a lease in the past means nobody is working on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RebuildState {
    /// The generation being built (the served one for an in-place rebuild).
    pub generation: u64,
    pub code_version: u32,
    /// Who holds the lease (host and process), for operators.
    pub owner: String,
    pub lease_until: DateTime<Utc>,
    /// The event-store position everything up to which is in the generation.
    pub position: u64,
    /// The event-store head when the rebuild started (for the progress and its estimate).
    pub head_at_start: u64,
    pub events_read: u64,
    pub documents_written: u64,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What the last finished rebuild did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RebuildSummary {
    pub generation: u64,
    pub code_version: u32,
    pub events_read: u64,
    pub documents_written: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// Everything the catalogue knows about one projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProjectionRecord {
    pub generations: Vec<Generation>,
    pub rebuild: Option<RebuildState>,
    pub last_rebuild: Option<RebuildSummary>,
}

impl ProjectionRecord {
    /// The record of a projection never rebuilt: generation 0, built by code version 1, served.
    pub fn initial() -> Self {
        Self {
            generations: vec![Generation {
                number: 0,
                code_version: 1,
                state: GenerationState::Active,
                since: DateTime::<Utc>::UNIX_EPOCH,
            }],
            rebuild: None,
            last_rebuild: None,
        }
    }

    pub fn active(&self) -> StoreResult<&Generation> {
        self.generations
            .iter()
            .find(|g| g.state == GenerationState::Active)
            .ok_or_else(|| StoreError::corrupt("the projection catalogue names no active generation"))
    }

    /// The generations writers keep up to date, the active one last.
    pub fn written(&self) -> Vec<u64> {
        let mut written: Vec<&Generation> = self
            .generations
            .iter()
            .filter(|g| matches!(g.state, GenerationState::Building | GenerationState::Draining))
            .collect();
        written.extend(self.generations.iter().filter(|g| g.state == GenerationState::Active));
        written.into_iter().map(|g| g.number).collect()
    }

    pub fn next_generation(&self) -> u64 {
        self.generations.iter().map(|g| g.number + 1).max().unwrap_or(1)
    }
}

/// The projection catalogue: one record per projection, replaced only by compare-and-swap on its
/// revision, so two rebuilds (or a rebuild and a switch) never both win.
#[async_trait]
pub trait ProjectionCatalogue: Send + Sync + std::fmt::Debug {
    /// The record and its revision; a projection never stored is [`ProjectionRecord::initial`] at
    /// revision 0.
    async fn load(&self, projection: Projection) -> StoreResult<(ProjectionRecord, u64)>;
    /// Stores `record` as revision `expected + 1` if the stored revision is `expected`. Returns
    /// whether it did.
    async fn store(&self, projection: Projection, expected: u64, record: &ProjectionRecord) -> StoreResult<bool>;
}

/// The storage of projection generations on one store engine: the catalogue, each generation's
/// read-model adapter, and the creation and removal of a generation's tables or collections.
#[async_trait]
pub trait GenerationStore: Send + Sync + std::fmt::Debug {
    fn catalogue(&self) -> Arc<dyn ProjectionCatalogue>;
    /// Creates the generation's storage for its writers (tables, collections, the indexes writes rely
    /// on); safe to repeat.
    async fn prepare(&self, projection: Projection, generation: u64) -> StoreResult<()>;
    /// Completes the generation for its readers (the indexes only queries use, built once after the
    /// bulk of its documents is written, which is faster than keeping them up to date); safe to
    /// repeat. Called before the switch.
    async fn complete(&self, projection: Projection, generation: u64) -> StoreResult<()>;
    /// Removes the generation's storage and everything in it. Never called for generation 0's
    /// storage while it is written.
    async fn drop_generation(&self, projection: Projection, generation: u64) -> StoreResult<()>;
    /// The ride views of one generation (reads and writes go there only).
    fn rides(&self, generation: u64) -> Arc<dyn RideViews>;
    /// The user views of one generation.
    fn users(&self, generation: u64) -> Arc<dyn UserViews>;
}

/// Where reads and writes of one projection go, as of the catalogue last read.
struct Route<T: ?Sized> {
    read: Arc<T>,
    /// The active generation last.
    write: Vec<Arc<T>>,
    read_at: Instant,
}

/// The catalogue of one projection as this process last read it, re-read after [`CATALOGUE_TTL`].
struct Router<T: ?Sized> {
    projection: Projection,
    catalogue: Arc<dyn ProjectionCatalogue>,
    open: Box<dyn Fn(u64) -> Arc<T> + Send + Sync>,
    route: Mutex<Option<Arc<Route<T>>>>,
    refresh: tokio::sync::Mutex<()>,
    ttl: Duration,
}

impl<T: ?Sized> std::fmt::Debug for Router<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("projection", &self.projection).finish_non_exhaustive()
    }
}

impl<T: ?Sized + Send + Sync> Router<T> {
    fn new(
        projection: Projection,
        catalogue: Arc<dyn ProjectionCatalogue>,
        ttl: Duration,
        open: impl Fn(u64) -> Arc<T> + Send + Sync + 'static,
    ) -> Self {
        Self {
            projection,
            catalogue,
            open: Box::new(open),
            route: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            ttl,
        }
    }

    fn cached(&self) -> Option<Arc<Route<T>>> {
        self.route.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The route, re-read from the catalogue when older than the TTL. While the catalogue cannot be
    /// read, the last route is kept (the store behind it is then most likely down too, and says so).
    async fn route(&self) -> StoreResult<Arc<Route<T>>> {
        if let Some(route) = self.cached().filter(|r| r.read_at.elapsed() < self.ttl) {
            return Ok(route);
        }
        let _one = self.refresh.lock().await;
        let cached = self.cached();
        if let Some(route) = cached.as_ref().filter(|r| r.read_at.elapsed() < self.ttl) {
            return Ok(route.clone());
        }
        let record = match self.catalogue.load(self.projection).await {
            Ok((record, _)) => record,
            Err(e) => return cached.ok_or(e),
        };
        let active = record.active()?.number;
        let route = Arc::new(Route {
            read: (self.open)(active),
            write: record.written().into_iter().map(|g| (self.open)(g)).collect(),
            read_at: Instant::now(),
        });
        *self.route.lock().unwrap_or_else(|e| e.into_inner()) = Some(route.clone());
        Ok(route)
    }
}

/// Runs `write` on every written generation, the active one last; answers what the active one did.
async fn write_all<T: ?Sized, R: Default, F>(route: &Route<T>, write: impl Fn(Arc<T>) -> F) -> StoreResult<R>
where
    F: std::future::Future<Output = StoreResult<R>>,
{
    let mut wrote = R::default();
    for target in &route.write {
        wrote = write(target.clone()).await?;
    }
    Ok(wrote)
}

/// [`RideViews`] over the generations of the `rides` projection: reads from the active one, writes
/// to every one the catalogue says is written.
#[derive(Debug)]
pub struct VersionedRideViews {
    router: Router<dyn RideViews>,
}

impl VersionedRideViews {
    pub fn new(store: Arc<dyn GenerationStore>) -> Self {
        Self::with_ttl(store, CATALOGUE_TTL)
    }

    pub fn with_ttl(store: Arc<dyn GenerationStore>, ttl: Duration) -> Self {
        let catalogue = store.catalogue();
        Self { router: Router::new(Projection::Rides, catalogue, ttl, move |g| store.rides(g)) }
    }
}

#[async_trait]
impl RideViews for VersionedRideViews {
    async fn upsert(&self, view: &RideView) -> StoreResult<bool> {
        write_all(&*self.router.route().await?, |rides| async move { rides.upsert(view).await }).await
    }
    async fn upsert_many(&self, views: &[RideView]) -> StoreResult<u64> {
        write_all(&*self.router.route().await?, |rides| async move { rides.upsert_many(views).await }).await
    }
    async fn get(&self, ride_id: RideId) -> StoreResult<Option<RideView>> {
        self.router.route().await?.read.get(ride_id).await
    }
    async fn list(&self, query: &RideQuery) -> StoreResult<Vec<RideView>> {
        self.router.route().await?.read.list(query).await
    }
    async fn count_waiting_in_cell(&self, cell: &str) -> StoreResult<u64> {
        self.router.route().await?.read.count_waiting_in_cell(cell).await
    }
    async fn waiting_since(&self, before: DateTime<Utc>, limit: usize) -> StoreResult<Vec<RideView>> {
        self.router.route().await?.read.waiting_since(before, limit).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.router.route().await?.read.ping().await
    }
}

/// [`UserViews`] over the generations of the `users` projection.
#[derive(Debug)]
pub struct VersionedUserViews {
    router: Router<dyn UserViews>,
}

impl VersionedUserViews {
    pub fn new(store: Arc<dyn GenerationStore>) -> Self {
        Self::with_ttl(store, CATALOGUE_TTL)
    }

    pub fn with_ttl(store: Arc<dyn GenerationStore>, ttl: Duration) -> Self {
        let catalogue = store.catalogue();
        Self { router: Router::new(Projection::Users, catalogue, ttl, move |g| store.users(g)) }
    }
}

#[async_trait]
impl UserViews for VersionedUserViews {
    async fn upsert_profile(&self, profile: &UserProfile) -> StoreResult<bool> {
        write_all(&*self.router.route().await?, |users| async move { users.upsert_profile(profile).await }).await
    }
    async fn profile(&self, user_id: UserId) -> StoreResult<Option<UserProfile>> {
        self.router.route().await?.read.profile(user_id).await
    }
    async fn upsert_credentials(&self, credentials: &Credentials) -> StoreResult<bool> {
        write_all(&*self.router.route().await?, |users| async move { users.upsert_credentials(credentials).await })
            .await
    }
    async fn credentials_by_email(&self, email_normalised: &str) -> StoreResult<Option<Credentials>> {
        self.router.route().await?.read.credentials_by_email(email_normalised).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.router.route().await?.read.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(number: u64, state: GenerationState) -> Generation {
        Generation { number, code_version: 1, state, since: DateTime::<Utc>::UNIX_EPOCH }
    }

    #[test]
    fn writers_keep_every_generation_but_the_retired_with_the_active_last() {
        let record = ProjectionRecord {
            generations: vec![
                generation(0, GenerationState::Retired),
                generation(1, GenerationState::Active),
                generation(2, GenerationState::Draining),
                generation(3, GenerationState::Building),
            ],
            rebuild: None,
            last_rebuild: None,
        };
        assert_eq!(record.written(), vec![2, 3, 1]);
        assert_eq!(record.active().unwrap().number, 1);
        assert_eq!(record.next_generation(), 4);
    }

    #[test]
    fn a_projection_never_rebuilt_serves_generation_zero() {
        let record = ProjectionRecord::initial();
        assert_eq!(record.written(), vec![0]);
        assert_eq!(record.active().unwrap().code_version, 1);
        assert_eq!(record.next_generation(), 1);
    }

    #[test]
    fn names_parse_back() {
        for p in Projection::ALL {
            assert_eq!(p.as_str().parse::<Projection>().unwrap(), p);
        }
        assert!("rides2".parse::<Projection>().unwrap_err().contains("unknown projection"));
    }
}
