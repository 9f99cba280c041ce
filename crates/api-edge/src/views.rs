//! The read side as clients see it: which views a caller may read, and how they are rendered. Used by
//! the query routes and by `Prefer: wait` answers alike.

use ridehail_events::{RideId, Role, UserId};
use ridehail_ports::RideView;

use crate::AppState;
use crate::auth::AuthUser;
use crate::error::ApiError;

/// The ride if `viewer` may see it: its rider, its driver, or the driver it is offered to.
pub async fn visible_ride(
    state: &AppState,
    ride_id: RideId,
    viewer: Option<AuthUser>,
) -> Result<Option<RideView>, ApiError> {
    let Some(viewer) = viewer else { return Ok(None) };
    let view = state.backend.rides.get(ride_id).await?;
    Ok(view.filter(|v| may_see(v, viewer)))
}

/// The ride for `viewer`, or an older copy of it (with its age) while the store is down.
pub async fn visible_ride_or_stale(
    state: &AppState,
    ride_id: RideId,
    viewer: AuthUser,
) -> Result<Option<(RideView, Option<std::time::Duration>)>, ApiError> {
    let found = state.backend.rides.get_or_stale(ride_id).await?;
    Ok(found.filter(|(v, _)| may_see(v, viewer)))
}

/// Whether `viewer` may see the ride: its rider, its driver, or the driver it is offered to.
fn may_see(view: &RideView, viewer: AuthUser) -> bool {
    let me = Some(viewer.user_id);
    match viewer.role {
        Role::Rider => view.rider_id == viewer.user_id,
        Role::Driver => view.driver_id == me || view.offered_driver_id == me,
    }
}

/// The user's profile as JSON, if projected (never a credential: the view holds none).
pub async fn profile_json(state: &AppState, user_id: UserId) -> Result<Option<serde_json::Value>, ApiError> {
    let profile = state.backend.users.profile(user_id).await?;
    Ok(profile.map(|p| serde_json::to_value(p).unwrap_or_default()))
}
