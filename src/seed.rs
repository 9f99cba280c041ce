//! `ridehail seed`: demo riders and drivers for development, on whatever backend the settings choose.
//!
//! The commands go through the user worker's own handler in this process (the same decide → append →
//! project → publish path as a consumed command), so no service needs to be running and the events are
//! as real as any. Safe to run twice: a user whose e-mail already has credentials is reused, and a
//! driver already online is left alone. Refused in production.

use std::sync::Arc;

use chrono::Utc;
use ridehail_events::Role;
use ridehail_events::ids::normalise_email;
use ridehail_events::user::{PasswordHash, SetAvailability, UserCommand, Vehicle};
use ridehail_events::{Actor, CommandEnvelope, CommandId, CorrelationId, GeoPoint, Message, topics};
use ridehail_ports::Backend;
use ridehail_ports::CommandState;
use ridehail_runtime::consumer::{HandleError, MessageHandler};
use ridehail_runtime::records::command_message;
use secrecy::SecretString;
use uuid::Uuid;

/// The password of every seeded user (development only; printed by the command).
pub const SEED_PASSWORD: &str = "ridehail-demo-password";
/// Drivers are spread over a square of this many degrees around the centre (~4.5 km at Lisbon).
const SPREAD_DEG: f64 = 0.04;
const CENTRE: GeoPoint = GeoPoint { lat: 38.7223, lon: -9.1393 };

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Demo drivers to create and put online.
    #[arg(long, default_value_t = 20)]
    drivers: usize,
    /// Demo riders to create.
    #[arg(long, default_value_t = 10)]
    riders: usize,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub created: usize,
    pub existing: usize,
    pub drivers_put_online: usize,
    pub password: &'static str,
    pub emails: Vec<String>,
}

fn email(role: Role, n: usize) -> String {
    let kind = if role == Role::Driver { "driver" } else { "rider" };
    format!("{kind}{n:03}@seed.ridehail.dev")
}

/// Where the n-th of `count` drivers waits: a grid over the city centre.
fn spot(n: usize, count: usize) -> GeoPoint {
    let side = (count as f64).sqrt().ceil().max(1.0) as usize;
    let step = SPREAD_DEG / side as f64;
    GeoPoint {
        lat: CENTRE.lat - SPREAD_DEG / 2.0 + step * (n / side) as f64 + step / 2.0,
        lon: CENTRE.lon - SPREAD_DEG / 2.0 + step * (n % side) as f64 + step / 2.0,
    }
}

/// Runs one command through the user worker's handler, as if consumed; fails unless accepted.
async fn execute(
    backend: &Backend,
    handler: &user_worker::UserCommandHandler,
    aggregate_id: Uuid,
    actor: Actor,
    command: UserCommand,
) -> anyhow::Result<()> {
    let envelope = CommandEnvelope {
        command_id: CommandId::new(),
        aggregate_id,
        correlation_id: CorrelationId::new(),
        causation_id: None,
        actor,
        issued_at: Utc::now(),
        command,
    };
    let type_name = envelope.command.type_name();
    let message = command_message(topics::USER_COMMANDS, &envelope.to_wire());
    handler.handle(&message).await.map_err(|e| match e {
        HandleError::Poison(reason) => anyhow::anyhow!("{type_name} refused: {reason}"),
        HandleError::Failed(e) | HandleError::Unavailable(e) | HandleError::Unfinished(e) => e.context(type_name),
    })?;
    let status = backend.commands.get(envelope.command_id).await?;
    match status {
        Some(s) if s.state == CommandState::Accepted => Ok(()),
        Some(s) => anyhow::bail!("{type_name} was not accepted: {:?}", s.rejection),
        None => anyhow::bail!("{type_name} left no outcome"),
    }
}

pub async fn run(backend: &Backend, args: &Args) -> anyhow::Result<Report> {
    let handler = user_worker::command_handler(backend.clone());
    let hasher = api_edge::password::PasswordPool::new(2, 64);
    let hash = Arc::new(PasswordHash(
        hasher.hash(SecretString::from(SEED_PASSWORD)).await.map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    let mut report = Report { password: SEED_PASSWORD, ..Report::default() };
    let people = (0..args.drivers).map(|n| (Role::Driver, n)).chain((0..args.riders).map(|n| (Role::Rider, n)));
    for (role, n) in people {
        let address = email(role, n);
        let user_id = match backend.users.credentials_by_email(&normalise_email(&address)).await? {
            Some(existing) => {
                report.existing += 1;
                existing.user_id.0
            }
            None => {
                let user_id = Uuid::now_v7();
                let vehicle = (role == Role::Driver).then(|| Vehicle {
                    make: "Renault".into(),
                    model: "Zoe".into(),
                    colour: "blue".into(),
                    plate: format!("SD-{n:02}-{:02}", n / 100),
                });
                let register = ridehail_events::user::RegisterUser {
                    email: address.clone(),
                    name: format!("Demo {} {n}", if role == Role::Driver { "Driver" } else { "Rider" }),
                    role,
                    password_hash: (*hash).clone(),
                    vehicle,
                };
                execute(backend, &handler, user_id, Actor::Anonymous, UserCommand::RegisterUser(register)).await?;
                report.created += 1;
                user_id
            }
        };
        if role == Role::Driver {
            let online = backend.users.profile(ridehail_events::UserId(user_id)).await?.is_some_and(|p| p.online);
            if !online {
                let go_online = SetAvailability { online: true, location: Some(spot(n, args.drivers)) };
                let actor = Actor::User { user_id, role: Role::Driver };
                execute(backend, &handler, user_id, actor, UserCommand::SetAvailability(go_online)).await?;
                report.drivers_put_online += 1;
            }
        }
        report.emails.push(address);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_spread_over_the_centre_without_sharing_a_spot() {
        let spots: Vec<GeoPoint> = (0..20).map(|n| spot(n, 20)).collect();
        for (i, a) in spots.iter().enumerate() {
            assert!((a.lat - CENTRE.lat).abs() <= SPREAD_DEG / 2.0 && (a.lon - CENTRE.lon).abs() <= SPREAD_DEG / 2.0);
            assert!(spots[i + 1..].iter().all(|b| a != b), "two drivers at {a:?}");
        }
    }
}
