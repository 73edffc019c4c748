//! reelay's domain, without I/O: what a generation is, what it costs, how it may fail, and which
//! requests are valid. Every other crate speaks these types.

pub mod apikey;
pub mod capability;
pub mod destination;
pub mod failure;
pub mod generation;
pub mod ids;
pub mod images;
pub mod moderation;
pub mod money;
pub mod named;
pub mod pricing;
pub mod recent;
pub mod request;
pub mod retry;

pub use failure::FailureCode;
pub use generation::{AspectRatio, GenerationStatus, Model};
pub use ids::{AccountId, GenerationId, KeyId};
pub use money::Credits;

/// The schema library the `openapi` feature's impls name, reachable from crates that declare
/// enums with `named_enum!` without depending on it themselves.
#[cfg(feature = "openapi")]
#[doc(hidden)]
pub use utoipa as __utoipa;
