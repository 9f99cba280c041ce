//! Field rules: part of the contract, applied by the edge (which names the failing field, before
//! anything is published) and again by the domain (which has the last word). One source for both.

use std::ops::RangeInclusive;

use crate::user::Vehicle;

// ---------------------------------------------------------------- rides

/// Rides whose pickup and dropoff are closer than this, in metres, are refused.
pub const MIN_TRIP_M: f64 = 50.0;
/// A cancellation's reason, in characters (and it must not be blank).
pub const MAX_REASON_CHARS: usize = 200;
/// A rating's comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 500;
/// The stars a rating may give.
pub const STARS: RangeInclusive<u8> = 1..=5;

pub fn valid_reason(reason: &str) -> bool {
    !reason.trim().is_empty() && reason.chars().count() <= MAX_REASON_CHARS
}

pub fn valid_comment(comment: Option<&str>) -> bool {
    comment.is_none_or(|c| c.chars().count() <= MAX_COMMENT_CHARS)
}

// ---------------------------------------------------------------- users

pub const MAX_EMAIL_CHARS: usize = 254;
pub const MAX_NAME_CHARS: usize = 100;
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Bounds the cost of hashing a hostile input.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// A pragmatic address check: one `@`, a non-empty local part, a dotted domain, no spaces.
pub fn valid_email(email: &str) -> bool {
    let email = email.trim();
    if email.is_empty() || email.chars().count() > MAX_EMAIL_CHARS || email.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else { return false };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

pub fn valid_name(name: &str) -> bool {
    let trimmed = name.trim();
    !trimmed.is_empty() && trimmed.chars().count() <= MAX_NAME_CHARS && !trimmed.chars().any(char::is_control)
}

pub fn valid_password(password: &str) -> bool {
    (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&password.chars().count())
}

/// The first vehicle field that is empty or too long.
pub fn invalid_vehicle_field(vehicle: &Vehicle) -> Option<&'static str> {
    let fields = [
        ("make", &vehicle.make, 50),
        ("model", &vehicle.model, 50),
        ("colour", &vehicle.colour, 30),
        ("plate", &vehicle.plate, 15),
    ];
    fields
        .into_iter()
        .find(|(_, value, max)| value.trim().is_empty() || value.chars().count() > *max)
        .map(|(name, _, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(valid_email("ana@example.com"));
        assert!(valid_email(" Ana.Silva+rides@mail.example.pt "));
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@example.com",
            "ana@@example.com",
            "ana@.com",
            "ana@example..com",
        ] {
            assert!(!valid_email(bad), "{bad:?} should be refused");
        }
    }

    #[test]
    fn passwords_need_twelve_characters() {
        assert!(!valid_password("elevenchars"));
        assert!(valid_password("twelve chars"));
        assert!(valid_password("ção-ção-ção-"), "characters, not bytes");
        assert!(!valid_password(&"x".repeat(MAX_PASSWORD_CHARS + 1)));
    }

    #[test]
    fn names_and_vehicles() {
        assert!(valid_name("Ana Silva"));
        assert!(!valid_name("  "));
        assert!(!valid_name(&"x".repeat(101)));
        let mut v =
            Vehicle { make: "Toyota".into(), model: "Prius".into(), colour: "white".into(), plate: "AA-00-BB".into() };
        assert_eq!(invalid_vehicle_field(&v), None);
        v.plate = " ".into();
        assert_eq!(invalid_vehicle_field(&v), Some("plate"));
    }
}
