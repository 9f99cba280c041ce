//! Field rules: part of the contract, applied by the edge (which names the failing field, before
//! anything is published) and again by the domain (which has the last word). One source for both.

use std::ops::RangeInclusive;

use crate::user::Vehicle;

// ---------------------------------------------------------------- rides

/// Rides whose pickup and dropoff are closer than this, in metres, are refused.
pub const MIN_TRIP_M: f64 = 50.0;
/// Rides whose pickup and dropoff are farther apart than this (straight line), in metres, are
/// refused: a city service, not a way to price a pole-to-pole trip.
pub const MAX_TRIP_M: f64 = 150_000.0;
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

/// A character that can make text look like something it is not: controls, format characters
/// (bidirectional overrides and isolates, zero-width spaces and joiners, the byte-order mark, soft
/// hyphens, tags), separators other than the space, private-use and unassigned code points, and the
/// letters that render blank (Hangul fillers, the braille blank, the combining grapheme joiner).
pub fn is_deceptive(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
    matches!(
        c.general_category(),
        G::Control
            | G::Format
            | G::Surrogate
            | G::PrivateUse
            | G::Unassigned
            | G::LineSeparator
            | G::ParagraphSeparator
    ) || matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}' | '\u{034F}' | '\u{180E}')
}

/// The form an address is stored, compared and logged in by: trimmed, NFKC-normalised (so
/// compatibility variants such as full-width letters are one address) and lower-cased.
pub fn normalise_email(email: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    email.trim().nfkc().collect::<String>().to_lowercase()
}

/// A pragmatic address check, on the NFKC form: one `@`, a non-empty local part, a dotted domain,
/// no spaces, nothing [deceptive](is_deceptive).
pub fn valid_email(email: &str) -> bool {
    use unicode_normalization::UnicodeNormalization as _;
    if email.chars().any(is_deceptive) {
        return false;
    }
    let normalised: String = email.trim().nfkc().collect();
    let email = normalised.as_str();
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
    !trimmed.is_empty() && trimmed.chars().count() <= MAX_NAME_CHARS && !trimmed.chars().any(is_deceptive)
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
    fn deceptive_characters_are_refused_in_addresses_and_names() {
        for bad in [
            "ana\u{202E}moc.elpmaxe@x.com", // right-to-left override
            "an\u{200B}a@example.com",      // zero-width space
            "ana@exa\u{200D}mple.com",      // zero-width joiner
            "\u{FEFF}ana@example.com",      // byte-order mark
            "ana\u{0007}@example.com",      // a control character
            "ana\u{2066}@example.com",      // a bidi isolate
            "ana\u{3164}@example.com",      // a blank-looking letter
        ] {
            assert!(!valid_email(bad), "{bad:?} should be refused");
        }
        assert!(!valid_name("Ana\u{202E}"));
        assert!(!valid_name("\u{200B}"));
        assert!(valid_name("Zoë Ngọc-Ánh"));
    }

    #[test]
    fn addresses_are_compared_in_their_nfkc_lower_case_form() {
        // Full-width letters are the same address as their ASCII forms.
        assert_eq!(normalise_email(" ＡＮＡ@Example.com "), "ana@example.com");
        assert!(valid_email("ＡＮＡ@example.com"));
        assert_eq!(normalise_email("Zoë@Example.pt"), normalise_email("zoe\u{0308}@example.pt"));
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
