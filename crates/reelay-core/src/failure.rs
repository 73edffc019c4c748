//! Why a generation failed, with each code's meaning and refund rule in one place.

use std::fmt;
use std::str::FromStr;

use crate::generation::UnknownValue;

/// The codes a failed generation's webhook carries in `error.message` (RunBlob's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    UnsafeContent,
    ModerationFailed,
    Timeout,
    TaskFailed,
    Cancelled,
    Maintenance,
}

impl FailureCode {
    pub const ALL: [Self; 6] = [
        Self::UnsafeContent,
        Self::ModerationFailed,
        Self::Timeout,
        Self::TaskFailed,
        Self::Cancelled,
        Self::Maintenance,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnsafeContent => "UNSAFE_CONTENT",
            Self::ModerationFailed => "MODERATION_FAILED",
            Self::Timeout => "TIMEOUT",
            Self::TaskFailed => "TASK_FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Maintenance => "MAINTENANCE",
        }
    }

    /// Whether the price comes back. The customer pays for moderation verdicts (the work of
    /// judging was done and the fault is the prompt's), never for reelay's own failures.
    pub fn refunded(self) -> bool {
        match self {
            Self::Timeout | Self::TaskFailed | Self::Cancelled | Self::Maintenance => true,
            Self::UnsafeContent | Self::ModerationFailed => false,
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Self::UnsafeContent => "the prompt matched the moderation rules; no work was done",
            Self::ModerationFailed => "the moderation step itself could not judge the prompt",
            Self::Timeout => "the generation ran past the time limit",
            Self::TaskFailed => "the generator reported an error",
            Self::Cancelled => "the client cancelled the generation",
            Self::Maintenance => "the generator was taken down for maintenance",
        }
    }
}

impl FromStr for FailureCode {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refund_rules_follow_the_contract() {
        let refunded: Vec<_> = FailureCode::ALL
            .into_iter()
            .filter(|c| c.refunded())
            .map(FailureCode::as_str)
            .collect();
        assert_eq!(
            refunded,
            ["TIMEOUT", "TASK_FAILED", "CANCELLED", "MAINTENANCE"]
        );
        for c in FailureCode::ALL {
            assert_eq!(c.as_str().parse::<FailureCode>().unwrap(), c);
        }
    }
}
