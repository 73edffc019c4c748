//! reelay's webhook engine: the heart of the product. Events written by the lifecycle (one
//! per terminal generation) are delivered at least once, signed per Standard Webhooks, on the
//! seed's retry policy, never into a private network, and never held up by another
//! destination's failures.

mod board;
pub mod dispatcher;
pub mod guard;
pub mod master_key;
pub mod metrics;
pub mod secrets;
pub mod sender;

pub use dispatcher::{Dispatcher, DispatcherConfig};
pub use master_key::MasterKey;
pub use secrets::{AccountSecrets, Keyring, RotateError};
pub use sender::{Sender, SenderConfig};
