//! Worker tokens, apart from API keys.
