//! The e-mail claim stream: one per normalised address (its id is a name-based UUID of the address),
//! holding which user owns it. Appending the first claim with expected version 0 is what makes two
//! simultaneous sign-ups with one address resolve to exactly one winner.

use ridehail_events::UserId;
use ridehail_events::user::{EmailClaimEvent, EmailClaimed};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the e-mail address is already registered")]
pub struct EmailTaken;

/// Claims the address for `user_id`. Claiming again for the same user changes nothing.
pub fn decide_claim(owner: Option<UserId>, user_id: UserId) -> Result<Vec<EmailClaimEvent>, EmailTaken> {
    match owner {
        None => Ok(vec![EmailClaimEvent::EmailClaimed(EmailClaimed { user_id })]),
        Some(existing) if existing == user_id => Ok(vec![]),
        Some(_) => Err(EmailTaken),
    }
}

pub fn evolve_claim(owner: Option<UserId>, event: &EmailClaimEvent) -> Option<UserId> {
    match event {
        EmailClaimEvent::EmailClaimed(e) => owner.or(Some(e.user_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const ANA: UserId = UserId(Uuid::from_u128(1));
    const BEA: UserId = UserId(Uuid::from_u128(2));

    #[test]
    fn given_no_claim_when_claiming_then_the_address_is_claimed() {
        assert_eq!(decide_claim(None, ANA), Ok(vec![EmailClaimEvent::EmailClaimed(EmailClaimed { user_id: ANA })]));
    }

    #[test]
    fn given_a_claim_when_the_same_user_claims_again_then_nothing_changes() {
        let owner = evolve_claim(None, &EmailClaimEvent::EmailClaimed(EmailClaimed { user_id: ANA }));
        assert_eq!(decide_claim(owner, ANA), Ok(vec![]));
    }

    #[test]
    fn given_a_claim_when_another_user_claims_then_it_is_taken() {
        let owner = evolve_claim(None, &EmailClaimEvent::EmailClaimed(EmailClaimed { user_id: ANA }));
        assert_eq!(decide_claim(owner, BEA), Err(EmailTaken));
    }
}
