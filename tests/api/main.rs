//! Integration tests: the real gateway on a random port, a real local receiver, requests
//! signed with the `svix` crate. One binary, so the crate links once.

mod admin;
mod architecture;
mod cli;
mod console;
mod delivery;
mod faults;
mod fuzz;
mod hardening;
mod helpers;
mod ingest;
mod openapi;
mod outputs;
// LD_PRELOAD and the shim's glibc interposition are Linux's.
#[cfg(target_os = "linux")]
mod powerloss;
mod process;
mod recordings;
mod recovery;
mod replicas;
mod schema;
mod sessions;
mod transcripts;
mod voice;
mod webdriver;
