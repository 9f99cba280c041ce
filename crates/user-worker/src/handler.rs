//! Handles one user command record: validate and decide on the user stream, claim the e-mail (for
//! sign-ups) on its own stream, append, then publish public events, project the profile and
//! credentials, update the driver geo index, and record the outcome. Redelivery is safe for the same
//! reasons as in ride-worker (outcome recorded → skip; events appended → only effects re-run).

use async_trait::async_trait;
use ridehail_events::ids::email_claim_id;
use ridehail_events::user::{EmailClaimEvent, UserCommand, UserEvent};
use ridehail_events::{CommandEnvelope, EventEnvelope, Message, UserId};
use ridehail_runtime::Backend;
use ridehail_runtime::ports::{AppendError, Rejection, RejectionKind};
use ridehail_runtime::worker::{self, CommandProcessor, Outcome};

use crate::domain::{EmailTaken, UserRejection, decide, decide_claim, evolve_claim, state_of};
use crate::projection::write_read_models;

#[derive(Debug, Clone)]
pub struct UserCommandHandler {
    backend: Backend,
}

impl UserCommandHandler {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    async fn decide_and_apply(&self, command: &CommandEnvelope<UserCommand>) -> anyhow::Result<Outcome> {
        let b = &self.backend;
        let user_id = UserId(command.aggregate_id);
        for _ in 0..worker::MAX_CONFLICT_RETRIES {
            let history = worker::load::<UserEvent>(&*b.events, command.aggregate_id).await?;
            let already = worker::caused_by(&history, command.command_id.0);
            if !already.is_empty() {
                self.complete_effects(user_id, &history, &already).await.map_err(worker::effects_pending)?;
                return Ok(accepted(&already));
            }
            let state = state_of(&history);
            let events = match decide(&state, &command.command) {
                Ok(events) => events,
                Err(rejection) => return Ok(Outcome::Rejected(rejection_of(&rejection))),
            };
            // Once the address is claimed for this user, the sign-up must finish: a failure from here on
            // is retried until it succeeds, or the address would stay claimed by nobody.
            let mut claimed = false;
            if let UserCommand::RegisterUser(c) = &command.command {
                match self.claim_email(command, &c.email, user_id).await? {
                    Ok(()) => claimed = true,
                    Err(EmailTaken) => return Ok(Outcome::Rejected(rejection_of(&UserRejection::EmailTaken))),
                }
            }
            let version = history.len() as u64;
            let now = b.clock.now();
            let new = worker::envelopes(command, command.aggregate_id, version, events, now);
            match worker::append(&*b.events, version, &new).await {
                Ok(()) => {
                    let mut all = history;
                    all.extend(new.iter().cloned());
                    self.complete_effects(user_id, &all, &new).await.map_err(worker::effects_pending)?;
                    return Ok(accepted(&new));
                }
                Err(AppendError::Conflict { .. }) => continue,
                Err(e) if claimed => return Err(worker::effects_pending(e.into())),
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("user {user_id}: gave up after {} append conflicts", worker::MAX_CONFLICT_RETRIES)
    }

    /// Claims the address for the user on its claim stream; the first append wins a race.
    async fn claim_email(
        &self,
        command: &CommandEnvelope<UserCommand>,
        email: &str,
        user_id: UserId,
    ) -> anyhow::Result<Result<(), EmailTaken>> {
        let b = &self.backend;
        let claim_id = email_claim_id(email);
        for _ in 0..worker::MAX_CONFLICT_RETRIES {
            let history = worker::load::<EmailClaimEvent>(&*b.events, claim_id).await?;
            let owner = history.iter().fold(None, |o, e| evolve_claim(o, &e.event));
            let events = match decide_claim(owner, user_id) {
                Ok(events) => events,
                Err(taken) => return Ok(Err(taken)),
            };
            let version = history.len() as u64;
            let new = worker::envelopes(command, claim_id, version, events, b.clock.now());
            match worker::append(&*b.events, version, &new).await {
                Ok(()) => return Ok(Ok(())),
                Err(AppendError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("e-mail claim: gave up after {} append conflicts", worker::MAX_CONFLICT_RETRIES)
    }

    async fn complete_effects(
        &self,
        user_id: UserId,
        all: &[EventEnvelope<UserEvent>],
        new: &[EventEnvelope<UserEvent>],
    ) -> anyhow::Result<()> {
        write_read_models(&self.backend, user_id, all).await?;
        worker::publish_events(&*self.backend.bus, ridehail_events::topics::USER_EVENTS, new).await?;
        Ok(())
    }
}

fn accepted(events: &[EventEnvelope<UserEvent>]) -> Outcome {
    Outcome::Accepted(events.iter().filter(|e| e.event.is_public()).map(|e| e.event.type_name().to_owned()).collect())
}

fn rejection_of(rejection: &UserRejection) -> Rejection {
    let kind = match rejection {
        UserRejection::UserNotFound => RejectionKind::NotFound,
        UserRejection::AlreadyRegistered | UserRejection::EmailTaken => RejectionKind::Conflict,
        UserRejection::NotADriver => RejectionKind::Forbidden,
        UserRejection::InvalidField { .. }
        | UserRejection::VehicleRequired
        | UserRejection::VehicleNotAllowed
        | UserRejection::LocationRequired
        | UserRejection::NothingToUpdate => RejectionKind::Invalid,
    };
    Rejection { kind, code: rejection.code().to_owned(), detail: rejection.to_string() }
}

#[async_trait]
impl CommandProcessor for UserCommandHandler {
    type Command = UserCommand;

    fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The user's own profile (only that user can read it).
    fn resource(&self, _aggregate_id: uuid::Uuid) -> String {
        "/v1/me".to_owned()
    }

    async fn process(&self, command: &CommandEnvelope<UserCommand>) -> anyhow::Result<Outcome> {
        self.decide_and_apply(command).await
    }
}
