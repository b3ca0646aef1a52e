//! `switchyard serve`: the daemon (being built).
