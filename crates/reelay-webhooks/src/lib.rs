//! reelay's wire contract with the outside world.
//!
//! The server builds the webhook body with these types and receivers parse it with the same
//! types, so the two sides cannot drift apart. The body keeps the seed's key order and
//! timestamp format byte for byte, because receivers written for RunBlob depend on them.
//! Signatures follow Standard Webhooks, so any of its libraries verifies them too.

pub mod payload;
pub mod signature;
pub mod timestamp;

pub use payload::{EventError, EventStatus, GenerationEvent};
pub use signature::{Secret, Verifier, VerifyError, sign_header};
