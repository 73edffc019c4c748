//! What happens to a generation over time: it is claimed, moderated, generated and finished;
//! or it runs out of time, or is cancelled. Every transition goes through the store, so a crash
//! at any instant leaves nothing stuck: leases expire and the work is claimed again.

mod changes;
mod engine;
pub mod generator;
pub mod inputs;
pub mod retention;
pub mod workers;

pub use changes::{MAX_STREAMS, MAX_STREAMS_PER_ACCOUNT, Watch, WatchRefused};
pub use engine::{Engine, EngineConfig};
pub use generator::{
    BuiltinRenderer, ExternalWorkers, GenerateError, Generator, InstantGenerator, Progress,
};
