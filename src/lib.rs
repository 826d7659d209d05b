//! sessiongate: a webhook gateway for AI voice/chat agent platforms.
//!
//! Vendors (Pathors, Agntix) post session lifecycle webhooks in their own shapes. sessiongate
//! authenticates each request, turns it into canonical session events, commits them durably
//! together with one delivery per matching downstream target, answers the vendor, and then
//! forwards every event with retries, signing and dead letters.
//!
//! # Layout
//! The modules follow the path a webhook takes; ARCHITECTURE.md draws it and orders them (a
//! module imports only those below it there: `tests/api/architecture.rs`). Leaves first
//! (each imports only the leaves below it), then the rooms, then what wires them:
//!
//! - [`event`]: the canonical session event (schema v2), its ids, and [`event::Inbound`]
//!   (what one vendor request produced); the one place a canonical event is rendered.
//! - [`auth`]: source authentication, the only way to obtain an [`auth::Verified`] body,
//!   which is all a vendor adapter accepts.
//! - [`settings`]: the configuration's layers (compiled-in defaults, file, environment) and
//!   the pieces each room parses its own settings with.
//! - [`clock`]: the one clock (wall time and tokio instants), manual in tests.
//! - [`telemetry`]: `tracing` set-up, and [`telemetry::chain`] for errors with their causes.
//! - [`testing`]: fixtures, Svix signing and PostgreSQL schemas for tests, demo and bench.
//! - [`vendors`]: one file per vendor, only parsing and mapping verified bytes to events.
//! - [`sessions`]: the session record every event of a session is merged into, and the
//!   accept plan (merge, finalize once, render), pure.
//! - [`store`]: the durable store trait, its outbox types and schema, and its SQLite and
//!   PostgreSQL backends; it decides duplicates.
//! - [`metrics`]: Prometheus metrics; each telemetry event logs and counts together.
//! - [`delivery`]: targets and routing, the hand-over, per-target workers, attempts, the
//!   retry rules, and the output seam.
//! - [`enrich`]: stored jobs that complete a session from outside its webhooks (Agntix
//!   transcripts, recording archives), which held events wait for.
//! - [`recovery`]: calls a vendor never sent, found in its list API and passed through the
//!   same adapter and commit as ingest.
//! - [`ingest`]: the HTTP side: `POST /ingest/{source}`, body limits, the checks made
//!   before a body is read, and the answers of the README's table.
//! - [`admin`]: the admin API, one file per resource, and its OpenAPI document.
//! - [`console`]: the operator's web console at `/console` (logins, CSRF, pages).
//! - [`error`]: the one API error type and its JSON body.
//! - [`config`]: each room's settings put together from one reading.
//! - [`app`]: wires everything into one [`app::Application`] that tests can start on port 0.
//! - [`demo`]: `sessiongate demo`, the whole pipeline in one command.
//! - [`operator`]: `sessiongate admin …`, the admin API from the command line.

pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod console;
pub mod delivery;
pub mod demo;
pub mod enrich;
pub mod error;
pub mod event;
pub mod ingest;
pub mod metrics;
pub mod operator;
pub mod recovery;
pub mod sessions;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod vendors;

/// The version sent in outbound `user-agent` headers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
