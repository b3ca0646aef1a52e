//! `switchyard serve` end to end (being built).
