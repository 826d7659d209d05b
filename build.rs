//! Which optional test services this build runs the tests of. A test that needs a service
//! (PostgreSQL, the brokers, an S3 store, a browser, an OpenAPI validator, a tmpfs) is
//! `#[ignore]`d with the reason and how to run it unless its variable is set, so `cargo test`
//! on a machine with only Rust reports those tests as ignored, never as passed. Under
//! `CI=true` every one is on: a missing service fails its tests.
//!
//! Changing a variable rebuilds the crate (cargo watches them here).

/// `(variable, cfg)`: the variable turns the cfg on.
const SERVICES: [(&str, &str); 6] = [
    ("SESSIONGATE_TEST_POSTGRES_URL", "sg_postgres"),
    ("SESSIONGATE_TEST_BROKERS", "sg_brokers"),
    ("SESSIONGATE_TEST_S3_ENDPOINT", "sg_s3"),
    ("SESSIONGATE_TEST_BROWSER", "sg_browser"),
    ("SESSIONGATE_TEST_OPENAPI_VALIDATOR", "sg_openapi_validator"),
    ("SESSIONGATE_TEST_TMPFS", "sg_tmpfs"),
];

fn main() {
    println!("cargo::rerun-if-env-changed=CI");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    for (variable, cfg) in SERVICES {
        println!("cargo::rerun-if-env-changed={variable}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let set = std::env::var(variable).is_ok_and(|v| !v.is_empty());
        if set || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
