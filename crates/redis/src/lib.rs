//! Redis adapters for what must be fast: the driver geo index ([`RedisDriverLocator`]), command status
//! ([`RedisCommandStatus`]), idempotency keys ([`RedisIdempotency`]) and a read-through cache in front
//! of the ride and profile read models ([`CachedRideViews`], [`CachedUserViews`]). All of them pass the
//! port contract suites of `ridehail-runtime` (`tests/contracts.rs`).
//!
//! # Connections
//! [`connect`] opens `connections` multiplexed connections (used round-robin), each a
//! `redis::aio::ConnectionManager` that reconnects by itself with a short backoff; connect and response
//! timeouts bound every command. [`connect_lazy`] defers connecting to the first command.
//!
//! # Keys (`P` = [`RedisSettings::key_prefix`])
//! | key | type | content | TTL |
//! |---|---|---|---|
//! | `{Pdrivers}:geo` | GEO set | online drivers with a position | none |
//! | `{Pdrivers}:driver:<id>` | hash | `version`, `online`, `lat`, `lon`, `cell`, `indexable`, hold (`ride`, `until` ms) | none |
//! | `{Pdrivers}:cell:<cell>` | set | online located drivers in the surge cell | none |
//! | `Pcommand:<id>` | hash | `final` (1/0), `body` (JSON status) | `command_status_ttl_seconds` |
//! | `Pidempotency:<len(scope)>:<scope>:<key>` | hash | `fingerprint`, `claimed_at` (ms), `response` (JSON) | the claim's `ttl` |
//! | `Pcache:ride:<id>`, `Pcache:profile:<id>` | hash | `version`, `body` (JSON view) | `cache_ttl_seconds` |
//!
//! Channel `Pcommand-final` announces the id of each command that reached a final state.
//!
//! # Atomicity
//! Every read-then-write runs as one Lua script (Redis runs a script without interleaving other
//! commands): a driver update that ignores older versions, reserve-nearest (search by radius, skip
//! excluded and held drivers, hold the first free one), hold, release, the per-cell count of free
//! drivers, the command-status record (a pending status never replaces a final one), the idempotency
//! claim, and the cache's store-if-newer. Times (`now`, hold deadlines, claim times) are the caller's
//! domain time passed as arguments, never Redis `TIME`, so every adapter agrees with the same clock.
//!
//! # Redis Cluster
//! The client speaks to one node (or a proxy). The keys are nonetheless laid out for a cluster: the
//! locator's keys share the hash tag `{Pdrivers}`, so its scripts, which reach per-driver and per-cell
//! keys they discover (not declared in `KEYS`), stay within one slot; every other script touches a
//! single declared key. Pending cache deletions are sent as one `DEL` per key.
//!
//! # Failures
//! The locator, command status and idempotency stores report Redis errors to the caller: Redis is the
//! source of truth for their data.
//!
//! The cache decorators never fail because of Redis; they answer from the inner store (still correct,
//! only slower). Each cache call, connecting included, is bounded by `response_timeout_ms`; after a
//! failure the decorators skip Redis for `cache_retry_interval_ms`, so an outage costs one timeout per
//! interval, not one per request, and they log one warning per `fallback_log_interval_seconds` (with
//! the count held back). An undecodable cached entry is logged with its key, deleted and treated as a
//! miss.
//!
//! Staleness: every cache store, a reader filling a miss or a writer after the inner store took a
//! change, writes only when the entry is absent or at an older version, so a reader that loaded a view
//! before a change cannot put it back over the newer one. A writer whose cache update fails deletes
//! the entry; if Redis refuses that too, the key is remembered (up to 10 000 keys) and deleted as soon
//! as Redis answers again, before this process reads from the cache. Residual risk, bounded by
//! `cache_ttl_seconds`: other processes reading the old entry before that deletion, a process that
//! stops before it can delete, or a reader that loaded the old view before the change and fills it
//! right after the deletion.

mod cache;
mod client;
mod commands;
mod drivers;
mod idempotency;
mod limits;
mod settings;

pub use cache::{CacheStats, CachedRideViews, CachedUserViews};
pub use client::{RedisClient, connect, connect_lazy};
pub use commands::RedisCommandStatus;
pub use drivers::RedisDriverLocator;
pub use idempotency::RedisIdempotency;
pub use limits::RedisLimiter;
pub use settings::RedisSettings;
