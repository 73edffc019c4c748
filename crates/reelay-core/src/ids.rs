//! Typed identifiers, so an account id can never be passed where a generation id is expected.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new id: a UUIDv7, time-ordered (so new rows land at the end of indexes instead
            /// of on random pages). It is unique, not secret: the `uuid` crate fills the bits
            /// after the millisecond with a counter seeded at random, so ids made in the same
            /// millisecond differ in far fewer than 74 random bits. Never use one as a
            /// capability (see [`crate::capability`]).
            pub fn random() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A generation (a task).
    GenerationId
);
uuid_id!(
    /// An account: owns keys, credits and generations.
    AccountId
);
uuid_id!(
    /// An API key's public identifier (the secret itself is never stored).
    KeyId
);
