//! Credits as integers of 0.0001, so balances never drift through floating point.

use std::fmt;
use std::str::FromStr;

/// An amount of credits in units of 0.0001. Written with exactly four decimals (`"0.2500"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Credits(i64);

const SCALE: i64 = 10_000;

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub const fn from_units(units: i64) -> Self {
        Self(units)
    }

    pub const fn units(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:04}", abs / SCALE as u64, abs % SCALE as u64)
    }
}

/// Text that is not a decimal amount with at most four places.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an amount of credits: write a decimal number with at most 4 places, like 12.5"
)]
pub struct InvalidAmount(pub String);

impl FromStr for Credits {
    type Err = InvalidAmount;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidAmount(s.to_owned());
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 4 {
            return Err(bad());
        }
        let whole: i64 = whole.parse().map_err(|_| bad())?;
        let frac: i64 = format!("{frac:0<4}").parse().map_err(|_| bad())?;
        let units = whole
            .checked_mul(SCALE)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(bad)?;
        Ok(Credits(if negative { -units } else { units }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_four_decimals() {
        assert_eq!(Credits::from_units(2500).to_string(), "0.2500");
        assert_eq!(Credits::from_units(125_000).to_string(), "12.5000");
        assert_eq!(Credits::from_units(-1).to_string(), "-0.0001");
        assert_eq!(Credits::ZERO.to_string(), "0.0000");
    }

    #[test]
    fn reads_decimals_up_to_four_places() {
        assert_eq!("12.5".parse::<Credits>().unwrap().units(), 125_000);
        assert_eq!("0.0001".parse::<Credits>().unwrap().units(), 1);
        assert_eq!("10".parse::<Credits>().unwrap().units(), 100_000);
        assert_eq!("-1.5".parse::<Credits>().unwrap().units(), -15_000);
        for bad in [
            "",
            ".5",
            "1.23456",
            "1e3",
            "abc",
            "1.2.3",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<Credits>().is_err(), "{bad} should be refused");
        }
    }
}
