//! The user aggregate and the e-mail claim under the command executor. A sign-up claims its address
//! on the address's own stream (the claim aggregate, run by the same executor) after `decide` and
//! before the user's events are appended, so of two sign-ups with one address exactly one wins.
//! Effects: publish the public events, project the profile and credentials, feed the driver geo
//! index. The loop itself is `ridehail_runtime::executor`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ridehail_events::ids::email_claim_id;
use ridehail_events::user::{EmailClaimEvent, UserCommand, UserEvent};
use ridehail_events::{CommandEnvelope, EventEnvelope, Message, UserId};
use ridehail_ports::{Backend, Rejection, RejectionKind, Resource};
use ridehail_runtime::deferred::Deferred;
use ridehail_runtime::executor::{Aggregate, CommandHandler, Executor, Folded, ProcessError, SnapshotPolicy};
use uuid::Uuid;

use crate::domain::{EmailTaken, UserRejection, decide, decide_claim, evolve_claim};
use crate::projection::{UserStream, write_read_models};

/// A user's stream is snapshotted every this many events: a driver's grows with every change of
/// availability (docs/snapshots.md).
pub const SNAPSHOT_EVERY: u64 = 100;

/// The version of [`UserStream`]'s fold and serialised form, as snapshots keep it: raise it when either
/// changes.
pub const SNAPSHOT_VERSION: u32 = 2;

/// The user command handler: the user aggregate run by the executor under the consume loop.
pub type UserCommandHandler = CommandHandler<UserAggregate>;

/// The handler for user commands on `backend`.
pub fn command_handler(backend: Backend) -> UserCommandHandler {
    CommandHandler::new(UserAggregate::new(backend.clone()), backend)
}

/// The user aggregate's domain-specific parts.
#[derive(Debug)]
pub struct UserAggregate {
    backend: Backend,
    claims: Executor<EmailClaim>,
}

impl UserAggregate {
    pub fn new(backend: Backend) -> Self {
        Self { claims: Executor::new(EmailClaim, backend.clone()), backend }
    }
}

#[async_trait]
impl Aggregate for UserAggregate {
    type Command = UserCommand;
    type Event = UserEvent;
    type State = UserStream;
    type Facts = ();
    type Rejection = UserRejection;

    fn evolve(&self, user: &mut UserStream, event: &EventEnvelope<UserEvent>) {
        user.apply(event);
    }

    fn snapshots(&self) -> Option<SnapshotPolicy> {
        Some(SnapshotPolicy { aggregate: "user", every: SNAPSHOT_EVERY, version: SNAPSHOT_VERSION })
    }

    async fn facts(
        &self,
        _user: &UserStream,
        _command: &CommandEnvelope<UserCommand>,
        _now: DateTime<Utc>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    fn decide(&self, user: &UserStream, command: &UserCommand, _: &()) -> Result<Vec<UserEvent>, UserRejection> {
        decide(&user.state, command)
    }

    fn rejection(&self, rejection: UserRejection) -> Rejection {
        rejection.into()
    }

    /// A sign-up claims its address. Once claimed for this user, the sign-up must finish, or the
    /// address would stay claimed by nobody.
    async fn claim(&self, command: &CommandEnvelope<UserCommand>, _events: &[UserEvent]) -> Result<bool, ProcessError> {
        if !matches!(command.command, UserCommand::RegisterUser(_)) {
            return Ok(false);
        }
        self.claims.execute(command).await?;
        Ok(true)
    }

    async fn effects(
        &self,
        _command: &CommandEnvelope<UserCommand>,
        user: &Folded<UserStream>,
        new: &[EventEnvelope<UserEvent>],
        deferred: &mut Deferred,
    ) -> Result<(), ProcessError> {
        write_read_models(&self.backend, UserId(user.stream), &user.state, user.version).await?;
        deferred.publish_events(ridehail_events::topics::USER_EVENTS, new);
        Ok(())
    }

    /// Internal events (none today) are not reported to clients.
    fn reported(&self, events: &[EventEnvelope<UserEvent>]) -> Vec<String> {
        events.iter().filter(|e| e.event.is_public()).map(|e| e.event.type_name().to_owned()).collect()
    }

    /// The user's own profile (only that user can read it).
    fn resource(&self, aggregate_id: Uuid) -> Resource {
        Resource::User(aggregate_id)
    }
}

/// The stream of one normalised e-mail address: who holds it. Decided on by sign-ups only.
#[derive(Debug)]
pub struct EmailClaim;

#[async_trait]
impl Aggregate for EmailClaim {
    type Command = UserCommand;
    type Event = EmailClaimEvent;
    type State = Option<UserId>;
    /// The user claiming the address.
    type Facts = UserId;
    type Rejection = EmailTaken;

    fn stream_id(&self, command: &CommandEnvelope<UserCommand>) -> Uuid {
        match &command.command {
            UserCommand::RegisterUser(c) => email_claim_id(&c.email),
            // Only sign-ups claim; anything else would decide on the user's own stream.
            _ => command.aggregate_id,
        }
    }

    fn evolve(&self, owner: &mut Option<UserId>, event: &EventEnvelope<EmailClaimEvent>) {
        *owner = evolve_claim(*owner, &event.event);
    }

    async fn facts(
        &self,
        _owner: &Option<UserId>,
        command: &CommandEnvelope<UserCommand>,
        _now: DateTime<Utc>,
    ) -> Result<UserId, ProcessError> {
        Ok(UserId(command.aggregate_id))
    }

    fn decide(
        &self,
        owner: &Option<UserId>,
        _command: &UserCommand,
        user_id: &UserId,
    ) -> Result<Vec<EmailClaimEvent>, EmailTaken> {
        decide_claim(*owner, *user_id)
    }

    fn rejection(&self, _: EmailTaken) -> Rejection {
        UserRejection::EmailTaken.into()
    }

    async fn effects(
        &self,
        _command: &CommandEnvelope<UserCommand>,
        _owner: &Folded<Option<UserId>>,
        _new: &[EventEnvelope<EmailClaimEvent>],
        _: &mut Deferred,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    fn resource(&self, aggregate_id: Uuid) -> Resource {
        Resource::User(aggregate_id)
    }
}

impl From<UserRejection> for Rejection {
    fn from(rejection: UserRejection) -> Self {
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
}
