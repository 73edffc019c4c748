//! Why a generation failed, with each code's meaning and refund rule in one place.

crate::named_enum! {
    /// The codes a failed generation's webhook carries in `error.message` (RunBlob's names).
    pub enum FailureCode {
        UnsafeContent => "UNSAFE_CONTENT",
        ModerationFailed => "MODERATION_FAILED",
        Timeout => "TIMEOUT",
        TaskFailed => "TASK_FAILED",
        Cancelled => "CANCELLED",
        Maintenance => "MAINTENANCE",
    }
}

impl FailureCode {
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
