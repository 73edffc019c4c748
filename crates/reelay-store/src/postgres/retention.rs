//! Retention: media first, then records; the ledger stays.
