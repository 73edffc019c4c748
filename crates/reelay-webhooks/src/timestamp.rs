//! Timestamps as the seed writes them: UTC, `YYYY-MM-DDTHH:MM:SS.ffffff`, no offset.
//!
//! The seed's examples come from Python's `isoformat()`, which drops the fraction when it is
//! zero; reelay always writes six digits and accepts any fraction (or none) when reading.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

const WRITE: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");
const READ: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");

/// Writes `at` in UTC with exactly six fractional digits.
pub fn format(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(WRITE)
        .expect("a UTC date always formats")
}

/// Reads a seed-style timestamp (fraction optional, no offset) as UTC.
pub fn parse(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    PrimitiveDateTime::parse(text, READ).map(PrimitiveDateTime::assume_utc)
}

/// Serde adapter for `OffsetDateTime` fields in the seed's format.
pub mod serde_seed {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }

    /// The same format for optional fields (`null` when absent).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use time::OffsetDateTime;

        pub fn serialize<S: Serializer>(
            at: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.serialize_str(&super::super::format(*at)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
            text.map(|t| super::super::parse(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn writes_six_digits_even_when_the_fraction_is_zero() {
        assert_eq!(
            format(datetime!(2025-12-06 21:43:03 UTC)),
            "2025-12-06T21:43:03.000000"
        );
        assert_eq!(
            format(datetime!(2025-12-06 21:43:03.374 UTC)),
            "2025-12-06T21:43:03.374000"
        );
    }

    #[test]
    fn writes_utc_whatever_the_offset() {
        assert_eq!(
            format(datetime!(2025-12-06 23:43:03.5 +2)),
            "2025-12-06T21:43:03.500000"
        );
    }

    #[test]
    fn reads_with_or_without_a_fraction() {
        assert_eq!(
            parse("2025-12-06T21:43:03.374000").unwrap(),
            datetime!(2025-12-06 21:43:03.374 UTC)
        );
        assert_eq!(
            parse("2025-12-06T21:43:03").unwrap(),
            datetime!(2025-12-06 21:43:03 UTC)
        );
        assert!(parse("2025-12-06 21:43:03").is_err());
    }
}
