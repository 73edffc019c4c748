//! The vocabulary of a generation: its status, model and aspect ratio.

use std::fmt;
use std::str::FromStr;

/// Where a generation is in its life. `Completed` and `Failed` are terminal: nothing leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenerationStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl GenerationStatus {
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// Text that names no variant of an enum of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

impl FromStr for GenerationStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

impl fmt::Display for GenerationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The models RunBlob offers; each has its own price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Model {
    Veo3Fast,
    Veo3Quality,
}

impl Model {
    pub const ALL: [Self; 2] = [Self::Veo3Fast, Self::Veo3Quality];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Veo3Fast => "veo-3-fast",
            Self::Veo3Quality => "veo-3-quality",
        }
    }
}

impl FromStr for Model {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The frame shape of the video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AspectRatio {
    Landscape,
    Portrait,
}

impl AspectRatio {
    pub const ALL: [Self; 2] = [Self::Landscape, Self::Portrait];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Landscape => "16:9",
            Self::Portrait => "9:16",
        }
    }
}

impl FromStr for AspectRatio {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValue(s.to_owned()))
    }
}

impl fmt::Display for AspectRatio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in GenerationStatus::ALL {
            assert_eq!(s.as_str().parse::<GenerationStatus>().unwrap(), s);
        }
        for m in Model::ALL {
            assert_eq!(m.as_str().parse::<Model>().unwrap(), m);
        }
        for a in AspectRatio::ALL {
            assert_eq!(a.as_str().parse::<AspectRatio>().unwrap(), a);
        }
        assert!("PENDING".parse::<GenerationStatus>().is_err());
    }

    #[test]
    fn only_completed_and_failed_are_terminal() {
        let terminal: Vec<_> = GenerationStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [GenerationStatus::Completed, GenerationStatus::Failed]
        );
    }
}
