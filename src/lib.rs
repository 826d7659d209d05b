//! sessiongate: a webhook gateway for AI voice/chat agent platforms.
//!
//! Vendors (Pathors, Agntix) post session lifecycle webhooks in their own shapes. sessiongate
//! authenticates each request, turns it into canonical session events, commits them durably
//! together with one delivery per matching downstream target, answers the vendor, and then
//! forwards every event with retries, signing and dead letters.
//!
//! # Layout
//! The modules follow the path a webhook takes:
//!
//! - [`settings`]: the configuration's layers (compiled-in defaults, file, environment) and
//!   the pieces each room parses its own settings with; [`config`] puts the parts together.
//! - [`clock`]: the one clock (wall time and tokio instants), manual in tests.
//! - [`auth`]: source authentication, a leaf every other room may use: the only way to
//!   obtain a [`auth::Verified`] body, which is all a vendor adapter accepts.
//! - [`ingest`]: the HTTP side: `POST /ingest/{source}`, body limits, the checks made
//!   before a body is read, and the answers of the README's table.
//! - [`vendors`]: one file per vendor, only parsing and mapping verified bytes to events.
//! - [`event`]: the canonical session event (schema v1) and its identifiers.
//! - [`sessions`]: the session record every event of a session is merged into.
//! - [`store`]: the durable store trait and its SQLite implementation; it decides duplicates.
//! - [`delivery`]: per-target workers, the retry policy and outbound signing.
//! - [`admin`]: the admin API (sessions, events, deliveries; retry and replay).
//! - [`app`]: wires everything into one [`app::Application`] that tests can start on port 0.
//! - [`metrics`]: Prometheus metrics; each telemetry event logs and counts together.
//! - [`telemetry`]: `tracing` set-up.
//! - [`demo`]: `sessiongate demo`, the whole pipeline in one command.
//! - [`error`]: the one API error type and its JSON body.
//! - [`testing`]: fixtures, Svix signing and PostgreSQL schemas for tests, demo and bench.

pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod error;
pub mod event;
pub mod ingest;
pub mod metrics;
pub mod sessions;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod vendors;

/// The version sent in outbound `user-agent` headers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
