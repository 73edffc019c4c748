//! The vocabulary of a generation: its status, model and aspect ratio.

pub use crate::named::UnknownValue;

crate::named_enum! {
    /// Where a generation is in its life. `Completed` and `Failed` are terminal: nothing
    /// leaves them.
    pub enum GenerationStatus {
        Pending => "pending",
        Processing => "processing",
        Completed => "completed",
        Failed => "failed",
    }
}

impl GenerationStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

crate::named_enum! {
    /// The models RunBlob offers; each has its own price.
    #[derive(PartialOrd, Ord)]
    pub enum Model {
        Veo3Fast => "veo-3-fast",
        Veo3Quality => "veo-3-quality",
    }
}

crate::named_enum! {
    /// The frame shape of the video.
    pub enum AspectRatio {
        Landscape => "16:9",
        Portrait => "9:16",
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
            assert_eq!(a.to_string().parse::<AspectRatio>().unwrap(), a);
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
