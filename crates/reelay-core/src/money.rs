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

    /// The largest amount (and balance) there is: 922337203685477.5807 credits. Amounts are
    /// stored as 64-bit integers; anything past this would wrap or, in SQLite, turn into a float.
    pub const MAX: Credits = Credits(i64::MAX);

    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    /// This balance after adding `amount` (removing it when negative), or why it cannot change.
    ///
    /// `held` is what the account's unfinished generations were charged: any of it may come
    /// back as a refund, which must never be refused nor overflow, so the balance plus what is
    /// held must stay within [`Credits::MAX`]. Charges and refunds only move credits between
    /// the two, so checking this on every credit added keeps every later refund in range.
    pub fn balance_after(self, amount: Credits, held: Credits) -> Result<Credits, BalanceError> {
        let balance = self.checked_add(amount).ok_or(if amount < Credits::ZERO {
            BalanceError::Negative
        } else {
            BalanceError::AboveMaximum
        })?;
        if balance < Credits::ZERO {
            return Err(BalanceError::Negative);
        }
        if amount > Credits::ZERO && balance.checked_add(held).is_none() {
            return Err(BalanceError::AboveMaximum);
        }
        Ok(balance)
    }
}

/// Why a balance cannot change by an amount; nothing changes then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    #[error("the balance would become negative")]
    Negative,
    #[error(
        "the balance would exceed the maximum of {} credits (counting credits held by \
         unfinished generations)",
        Credits::MAX
    )]
    AboveMaximum,
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:04}", abs / SCALE as u64, abs % SCALE as u64)
    }
}

/// Text that is not an amount of credits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAmount {
    /// Not a decimal amount with at most four places.
    #[error(
        "{0:?} is not an amount of credits: write a decimal number with at most 4 places, like \
         12.5"
    )]
    Malformed(String),
    /// A well-formed number beyond what can be counted.
    #[error(
        "{0} credits is beyond the largest amount there is: amounts go from -{max} to {max}",
        max = Credits::MAX
    )]
    OutOfRange(String),
}

impl FromStr for Credits {
    type Err = InvalidAmount;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidAmount::Malformed(s.to_owned());
        let too_big = || InvalidAmount::OutOfRange(s.to_owned());
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 4 {
            return Err(bad());
        }
        // Only digits are left, so a failed parse means too many of them.
        let whole: i64 = whole.parse().map_err(|_| too_big())?;
        let frac: i64 = format!("{frac:0<4}").parse().map_err(|_| bad())?;
        let units = whole
            .checked_mul(SCALE)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(too_big)?;
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
        for bad in ["", ".5", "1.23456", "1e3", "abc", "1.2.3", "-", "1.-5"] {
            assert_eq!(
                bad.parse::<Credits>(),
                Err(InvalidAmount::Malformed(bad.into())),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn reads_up_to_the_largest_amount_and_refuses_beyond() {
        assert_eq!(Credits::MAX.to_string(), "922337203685477.5807");
        assert_eq!("922337203685477.5807".parse(), Ok(Credits::MAX));
        assert_eq!(
            "-922337203685477.5807".parse(),
            Ok(Credits::from_units(-i64::MAX))
        );
        for beyond in [
            "922337203685477.5808",
            "922337203685478",
            "-922337203685477.5808",
            "99999999999999999999",
            "99999999999999999999999999999.5",
        ] {
            let e = beyond.parse::<Credits>().unwrap_err();
            assert_eq!(e, InvalidAmount::OutOfRange(beyond.into()));
            assert!(
                e.to_string().contains(
                    "beyond the largest amount there is: amounts go from \
                               -922337203685477.5807 to 922337203685477.5807"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn balances_stay_between_zero_and_the_maximum() {
        let c = Credits::from_units;
        assert_eq!(c(10).balance_after(c(5), c(0)), Ok(c(15)));
        assert_eq!(c(10).balance_after(c(-10), c(0)), Ok(c(0)));
        assert_eq!(
            c(10).balance_after(c(-11), c(0)),
            Err(BalanceError::Negative)
        );
        assert_eq!(
            c(0).balance_after(c(-i64::MAX), c(0)),
            Err(BalanceError::Negative)
        );
        assert_eq!(
            c(1).balance_after(Credits::MAX, c(0)),
            Err(BalanceError::AboveMaximum)
        );
        assert_eq!(c(0).balance_after(Credits::MAX, c(0)), Ok(Credits::MAX));
        // Credits held by unfinished generations count: they may come back as refunds.
        assert_eq!(
            c(0).balance_after(Credits::MAX, c(1)),
            Err(BalanceError::AboveMaximum)
        );
        assert_eq!(
            c(0).balance_after(c(i64::MAX - 1), c(1)),
            Ok(c(i64::MAX - 1))
        );
        // Removing credits is never refused for what is held.
        assert_eq!(Credits::MAX.balance_after(c(-1), c(5)), Ok(c(i64::MAX - 1)));
        let e = BalanceError::AboveMaximum.to_string();
        assert!(
            e.contains("the balance would exceed the maximum of 922337203685477.5807 credits"),
            "{e}"
        );
    }
}
