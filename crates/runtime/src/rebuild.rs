//! Live projection rebuilds: build a projection's new generation from the event store while the
//! system serves traffic, catch up with the head, switch readers to it, retire the old one.
//!
//! The steps, and what each one relies on (docs/projections.md has the whole argument):
//! 1. **Claim** the projection's rebuild in the catalogue (compare-and-swap): a new generation in
//!    state `building` with a lease, or an interrupted rebuild whose lease has lapsed (resumed from its
//!    last checkpoint). A live lease held by another process means another rebuild runs: refused.
//! 2. **Scan** the whole history in the store's global order, page by page, folding each stream into
//!    the new generation ([`Fold`]), checkpointing the position and renewing the lease as it goes.
//!    Writers keep every `building` generation up to date as well (the catalogue tells them within
//!    [`CATALOGUE_TTL`]), so what is appended during the scan reaches the generation either way.
//! 3. **Switch** once a page comes back empty and every process has seen the generation: it becomes
//!    `active`, the old one `draining` (still written, for readers that have not seen the switch).
//! 4. **Retire** the old generation after the TTL: caches are emptied, it is marked `retired`, and
//!    after another TTL (no writer left) its storage is dropped.
//!
//! Nothing else happens during a rebuild: no record published, no timer armed, no command status
//! written. The fold writes only into the generation it is given.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::WireEvent;
use ridehail_ports::Backend;
use ridehail_ports::projections::{
    CATALOGUE_TTL, Generation, GenerationState, Projection, ProjectionRecord, RebuildState, RebuildSummary,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What a projection's rebuild folds the history into. Implemented next to each projection (the ride
/// and user workers).
#[async_trait]
pub trait Fold: Send {
    fn projection(&self) -> Projection;
    /// The projection code's version (the workers' `projection::VERSION`).
    fn code_version(&self) -> u32;
    /// Folds one page of the history (global order; every aggregate type: skip the others) into
    /// `generation` and writes what changed there. Returns the documents written.
    async fn apply(&mut self, backend: &Backend, generation: u64, events: Vec<WireEvent>) -> anyhow::Result<u64>;
}

/// What a fold does with an event of a stream whose fold it holds at `held` (its version; `None`: it
/// holds nothing for that stream, not even in the generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The next event: fold it in.
    Apply,
    /// Already folded in (a writer was ahead of the scan, or a page is read again after a resume).
    Skip,
    /// Something before it is missing (an append that became visible out of position order): fold the
    /// whole stream again from the event store.
    Refold,
}

pub fn step(held: Option<u64>, sequence: u64) -> Step {
    match held {
        None if sequence == 1 => Step::Apply,
        Some(version) if version >= sequence => Step::Skip,
        Some(version) if version + 1 == sequence => Step::Apply,
        _ => Step::Refold,
    }
}

/// How many streams a fold keeps in memory between pages; beyond it, it forgets them and reads a
/// stream's fold back from the generation when the stream appears again.
pub const HELD_STREAMS: usize = 200_000;

/// Told how a rebuild goes: a progress bar on a terminal, log lines otherwise.
pub trait Progress: Send + Sync {
    fn started(&self, projection: Projection, state: &RebuildState);
    /// After each page: `state.position` of `head` (the head may move).
    fn advanced(&self, state: &RebuildState, head: u64);
    fn finished(&self, summary: &RebuildSummary);
}

/// Progress reported nowhere (the workers' automatic rebuilds log their start and end themselves).
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn started(&self, _: Projection, _: &RebuildState) {}
    fn advanced(&self, _: &RebuildState, _: u64) {}
    fn finished(&self, _: &RebuildSummary) {}
}

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Names the process in the lease (host and pid), for operators.
    pub owner: String,
    /// How long the lease lasts without a renewal: after a crash, another process may resume then.
    pub lease: Duration,
    /// Events read per page.
    pub page: usize,
    /// How long processes may use a catalogue they read ([`CATALOGUE_TTL`]; shorter in tests).
    pub catalogue_ttl: Duration,
    /// Rebuild even when the served generation was built by this code version.
    pub force: bool,
    /// At most this many events per second, to spare a store that serves traffic (none: as fast as
    /// it goes).
    pub max_rate: Option<u32>,
}

impl RebuildOptions {
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            lease: Duration::from_secs(15),
            page: 2000,
            catalogue_ttl: CATALOGUE_TTL,
            force: true,
            max_rate: None,
        }
    }
}

/// How a rebuild ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Switched to the new generation (or, in place, finished the pass).
    Finished(RebuildSummary),
    /// Another process holds the lease.
    Busy { owner: String, lease_until: DateTime<Utc> },
    /// Not forced, and the served generation was built by this code version already.
    UpToDate,
    /// Shut down mid-way: the checkpoint is stored and the lease released, so a later run resumes.
    Stopped(RebuildState),
}

/// The owner name of this process for leases: `host:pid`.
pub fn owner_name() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Runs (or resumes) the rebuild of `fold`'s projection to its end, or until `shutdown`.
pub async fn rebuild(
    backend: &Backend,
    fold: &mut dyn Fold,
    options: &RebuildOptions,
    progress: &dyn Progress,
    shutdown: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let projection = fold.projection();
    let catalogue = Catalogue { backend, projection };
    collect_retired(backend, projection, options.catalogue_ttl).await?;
    let (mut state, registered) = match claim(backend, projection, fold.code_version(), options).await? {
        Claim::Claimed { state, announced } => (state, announced),
        Claim::Busy { owner, lease_until } => return Ok(Outcome::Busy { owner, lease_until }),
        Claim::UpToDate => return Ok(Outcome::UpToDate),
    };
    progress.started(projection, &state);
    info!(%projection, generation = state.generation, position = state.position, "rebuild started");
    let mut checkpointed = tokio::time::Instant::now();
    let (run_started, mut run_events) = (tokio::time::Instant::now(), 0u64);
    // The next page is read while this one is folded and written (the store's reads and the
    // generation's writes overlap).
    let read_page = |after: u64| {
        let (events, page) = (backend.events.clone(), options.page);
        tokio::spawn(async move { events.read_all(Some(&after.to_string()), page).await })
    };
    let mut prefetched = read_page(state.position);
    loop {
        if shutdown.is_cancelled() {
            state.lease_until = backend.clock.now();
            catalogue.checkpoint(&state, &options.owner).await?;
            info!(%projection, position = state.position, "rebuild stopped; a later run resumes it");
            return Ok(Outcome::Stopped(state));
        }
        let page = prefetched.await??;
        let Some(next) = page.next.as_deref() else {
            // At the head. Every process must have seen the generation before the switch, so that
            // what is appended from now on is written there too.
            let seen_by_all = registered + chrono::Duration::from_std(options.catalogue_ttl * 2)?;
            let now = backend.clock.now();
            if now >= seen_by_all {
                break;
            }
            tokio::time::sleep((seen_by_all - now).to_std().unwrap_or_default()).await;
            prefetched = read_page(state.position);
            continue;
        };
        let next: u64 = next.parse()?;
        prefetched = read_page(next);
        let count = page.events.len() as u64;
        state.documents_written += fold.apply(backend, state.generation, page.events).await?;
        state.events_read += count;
        state.position = next;
        run_events += count;
        if let Some(rate) = options.max_rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(run_events as f64 / f64::from(rate));
            tokio::time::sleep_until(run_started + due).await;
        }
        // The position only moves once the page's writes are durable (`apply` returned).
        if checkpointed.elapsed() >= Duration::from_millis(500) {
            state.lease_until = backend.clock.now() + chrono::Duration::from_std(options.lease)?;
            catalogue.checkpoint(&state, &options.owner).await?;
            checkpointed = tokio::time::Instant::now();
            progress.advanced(&state, backend.events.head().await?.max(state.position));
        }
    }
    if projection.has_generations() {
        backend.projections.complete(projection, state.generation).await?;
    }
    let summary = switch(backend, projection, &state, &options.owner).await?;
    progress.advanced(&state, state.position);
    info!(%projection, generation = summary.generation, events = summary.events_read, "switched to the new generation");
    if projection.has_generations() {
        retire_previous(backend, projection, options.catalogue_ttl).await?;
    }
    progress.finished(&summary);
    Ok(Outcome::Finished(summary))
}

/// Keeps a projection built by this code version: when the served generation was built by an older
/// one (a deploy that changed the view), rebuilds it live, or waits for the process already doing so.
/// Returns once it is current, or at shutdown (an unfinished rebuild resumes on the next start);
/// failures are logged and retried.
pub async fn keep_current(backend: Backend, mut fold: impl Fold, shutdown: CancellationToken) -> anyhow::Result<()> {
    let projection = fold.projection();
    let options = RebuildOptions { force: false, ..RebuildOptions::new(owner_name()) };
    loop {
        let wait = match rebuild(&backend, &mut fold, &options, &Silent, &shutdown).await {
            Ok(Outcome::Finished(summary)) => {
                info!(%projection, generation = summary.generation, code_version = summary.code_version,
                    events = summary.events_read, "projection rebuilt for this code version");
                return Ok(());
            }
            Ok(Outcome::UpToDate | Outcome::Stopped(_)) => return Ok(()),
            Ok(Outcome::Busy { .. }) => options.lease,
            Err(error) => {
                warn!(%projection, error = format!("{error:#}"), "projection rebuild failed; retrying");
                Duration::from_secs(10)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

enum Claim {
    /// `announced`: when writers were first told of the generation being built (never, in place:
    /// they write the served one anyway).
    Claimed {
        state: RebuildState,
        announced: DateTime<Utc>,
    },
    Busy {
        owner: String,
        lease_until: DateTime<Utc>,
    },
    UpToDate,
}

/// Takes the rebuild: resumes one whose lease lapsed (or is ours), else starts a new generation.
async fn claim(
    backend: &Backend,
    projection: Projection,
    code_version: u32,
    options: &RebuildOptions,
) -> anyhow::Result<Claim> {
    let catalogue = backend.projections.catalogue();
    loop {
        let (mut record, revision) = catalogue.load(projection).await?;
        let now = backend.clock.now();
        let lease_until = now + chrono::Duration::from_std(options.lease)?;
        match record.rebuild.take() {
            Some(running) if running.owner != options.owner && running.lease_until > now => {
                return Ok(Claim::Busy { owner: running.owner, lease_until: running.lease_until });
            }
            Some(interrupted) if interrupted.code_version == code_version => {
                let state = RebuildState { owner: options.owner.clone(), lease_until, updated_at: now, ..interrupted };
                record.rebuild = Some(state.clone());
                if catalogue.store(projection, revision, &record).await? {
                    return Ok(Claim::Claimed { announced: building_since(&record, state.generation), state });
                }
                continue;
            }
            Some(stale) => {
                // Built by other code: its documents are not this code's fold. Start over.
                warn!(%projection, generation = stale.generation, "abandoning a rebuild by another code version");
                retire(&mut record, stale.generation, now);
            }
            None => {}
        }
        let active = record.active()?.clone();
        if !options.force && active.code_version >= code_version {
            return Ok(Claim::UpToDate);
        }
        if !options.force && backend.events.head().await? == 0 {
            // No history, so nothing to fold: the served generation is this code's as it stands
            // (a new deployment).
            for g in record.generations.iter_mut().filter(|g| g.number == active.number) {
                g.code_version = code_version;
            }
            if catalogue.store(projection, revision, &record).await? {
                return Ok(Claim::UpToDate);
            }
            continue;
        }
        let generation = if projection.has_generations() { record.next_generation() } else { active.number };
        if projection.has_generations() {
            // Storage first, then the catalogue entry: a writer that sees the entry finds the tables.
            backend.projections.prepare(projection, generation).await?;
            record.generations.push(Generation {
                number: generation,
                code_version,
                state: GenerationState::Building,
                since: now,
            });
        }
        let state = RebuildState {
            generation,
            code_version,
            owner: options.owner.clone(),
            lease_until,
            position: 0,
            head_at_start: backend.events.head().await?,
            events_read: 0,
            documents_written: 0,
            started_at: now,
            updated_at: now,
        };
        record.rebuild = Some(state.clone());
        if catalogue.store(projection, revision, &record).await? {
            return Ok(Claim::Claimed { announced: building_since(&record, state.generation), state });
        }
    }
}

/// When writers were first told of `generation` as building (never, for an in-place rebuild).
fn building_since(record: &ProjectionRecord, generation: u64) -> DateTime<Utc> {
    let building = record.generations.iter().find(|g| g.number == generation && g.state == GenerationState::Building);
    building.map_or(DateTime::<Utc>::UNIX_EPOCH, |g| g.since)
}

fn retire(record: &mut ProjectionRecord, generation: u64, now: DateTime<Utc>) {
    for g in record.generations.iter_mut().filter(|g| g.number == generation) {
        g.state = GenerationState::Retired;
        g.since = now;
    }
}

/// The catalogue record of one projection, changed by compare-and-swap with a re-read on conflict.
struct Catalogue<'a> {
    backend: &'a Backend,
    projection: Projection,
}

impl Catalogue<'_> {
    /// Applies `change` to the stored record until the swap wins; `change` answers false to give up.
    async fn update(
        &self,
        mut change: impl FnMut(&mut ProjectionRecord) -> anyhow::Result<bool>,
    ) -> anyhow::Result<bool> {
        let catalogue = self.backend.projections.catalogue();
        loop {
            let (mut record, revision) = catalogue.load(self.projection).await?;
            if !change(&mut record)? {
                return Ok(false);
            }
            if catalogue.store(self.projection, revision, &record).await? {
                return Ok(true);
            }
        }
    }

    /// Stores the rebuild's progress, if the lease is still this process's.
    async fn checkpoint(&self, state: &RebuildState, owner: &str) -> anyhow::Result<()> {
        let kept = self
            .update(|record| {
                let ours =
                    record.rebuild.as_ref().is_some_and(|r| r.owner == owner && r.generation == state.generation);
                if ours {
                    record.rebuild = Some(RebuildState { updated_at: self.backend.clock.now(), ..state.clone() });
                }
                Ok(ours)
            })
            .await?;
        anyhow::ensure!(kept, "the {} rebuild's lease was taken over by another process; stopping", self.projection);
        Ok(())
    }
}

/// Makes the built generation the served one (the old one drains), or ends an in-place pass.
async fn switch(
    backend: &Backend,
    projection: Projection,
    state: &RebuildState,
    owner: &str,
) -> anyhow::Result<RebuildSummary> {
    let now = backend.clock.now();
    let summary = RebuildSummary {
        generation: state.generation,
        code_version: state.code_version,
        events_read: state.events_read,
        documents_written: state.documents_written,
        started_at: state.started_at,
        finished_at: now,
    };
    let switched = Catalogue { backend, projection }
        .update(|record| {
            if !record.rebuild.as_ref().is_some_and(|r| r.owner == owner && r.generation == state.generation) {
                return Ok(false);
            }
            for g in &mut record.generations {
                if g.number == state.generation {
                    g.state = GenerationState::Active;
                    g.code_version = state.code_version;
                    g.since = now;
                } else if g.state == GenerationState::Active {
                    g.state = GenerationState::Draining;
                    g.since = now;
                }
            }
            record.rebuild = None;
            record.last_rebuild = Some(summary.clone());
            Ok(true)
        })
        .await?;
    anyhow::ensure!(switched, "the {projection} rebuild's lease was taken over by another process before the switch");
    Ok(summary)
}

/// After a switch: waits until no reader uses the old generation, empties the caches, retires it,
/// waits until no writer does, and drops it.
async fn retire_previous(backend: &Backend, projection: Projection, ttl: Duration) -> anyhow::Result<()> {
    let margin = ttl + Duration::from_millis(250);
    tokio::time::sleep(margin).await;
    // Cached documents may come from the old generation (another code version's shape).
    let forgotten = match projection {
        Projection::Rides => backend.rides.forget_cached().await,
        Projection::Users => backend.users.forget_cached().await,
        Projection::Drivers => Ok(()),
    };
    if let Err(error) = forgotten {
        warn!(%projection, %error, "could not empty the cache; its entries live until their TTL");
    }
    let now = backend.clock.now();
    let mut retired = Vec::new();
    Catalogue { backend, projection }
        .update(|record| {
            retired =
                record.generations.iter().filter(|g| g.state == GenerationState::Draining).map(|g| g.number).collect();
            for generation in &retired {
                retire(record, *generation, now);
            }
            Ok(!retired.is_empty())
        })
        .await?;
    tokio::time::sleep(margin).await;
    drop_generations(backend, projection, &retired).await
}

/// Drops the storage of `generations` and removes them from the catalogue.
async fn drop_generations(backend: &Backend, projection: Projection, generations: &[u64]) -> anyhow::Result<()> {
    for generation in generations {
        backend.projections.drop_generation(projection, *generation).await?;
        info!(%projection, generation, "dropped a retired generation");
    }
    Catalogue { backend, projection }
        .update(|record| {
            let before = record.generations.len();
            record.generations.retain(|g| !generations.contains(&g.number));
            Ok(record.generations.len() != before)
        })
        .await?;
    Ok(())
}

/// The generations of `record` in `state` for which `settled` holds.
fn settled_in(record: &ProjectionRecord, state: GenerationState, settled: impl Fn(&Generation) -> bool) -> Vec<u64> {
    record.generations.iter().filter(|g| g.state == state && settled(g)).map(|g| g.number).collect()
}

/// Cleans up after an interrupted switch: drops generations retired more than a TTL ago, and
/// retires those left draining.
async fn collect_retired(backend: &Backend, projection: Projection, ttl: Duration) -> anyhow::Result<()> {
    let now = backend.clock.now();
    let settled = |g: &Generation| g.since + chrono::Duration::from_std(ttl * 2).unwrap_or_default() <= now;
    let (record, _) = backend.projections.catalogue().load(projection).await?;
    let droppable = settled_in(&record, GenerationState::Retired, settled);
    drop_generations(backend, projection, &droppable).await?;
    Catalogue { backend, projection }
        .update(|record| {
            let draining = settled_in(record, GenerationState::Draining, settled);
            for generation in &draining {
                retire(record, *generation, now);
            }
            Ok(!draining.is_empty())
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_folded_in_order_and_refolded_when_an_event_is_missing() {
        assert_eq!(step(None, 1), Step::Apply);
        assert_eq!(step(Some(3), 4), Step::Apply);
        assert_eq!(step(Some(4), 4), Step::Skip);
        assert_eq!(step(Some(9), 4), Step::Skip);
        assert_eq!(step(Some(2), 4), Step::Refold);
        assert_eq!(step(None, 2), Step::Refold);
    }
}
