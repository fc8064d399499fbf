//! Records how the binary was built, so that results can say so (`candle_server --build-info`).
//!
//! Cargo tells build scripts the profile's opt-level and debug setting, but not its LTO or
//! codegen-units; those are read from this crate's own `[profile.release]` table, with the
//! `CARGO_PROFILE_RELEASE_*` environment overrides applied the way Cargo applies them.

use std::env;
use std::fs;
use std::process::Command;

const PROFILE_KEYS: [(&str, &str); 3] =
    [("lto", "false"), ("codegen-units", "16"), ("panic", "unwind")];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");

    let profile = env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    emit("PROFILE", &profile);
    emit("OPT_LEVEL", &env::var("OPT_LEVEL").unwrap_or_default());
    emit("DEBUG", &env::var("DEBUG").unwrap_or_default());
    emit("TARGET", &env::var("TARGET").unwrap_or_default());
    emit("TARGET_FEATURES", &env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default());
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default().replace('\x1f', " ");
    emit("RUSTFLAGS", rustflags.trim());

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    emit("RUSTC", &rustc_version);

    let lock = fs::read_to_string("Cargo.lock").unwrap_or_default();
    let crates: Vec<String> = RECORDED_CRATES
        .iter()
        .filter_map(|name| locked_version(&lock, name).map(|v| format!("{name}={v}")))
        .collect();
    emit("CRATES", &crates.join(","));

    // Cargo's "debug" profile is spelled [profile.dev] in Cargo.toml.
    let table = if profile == "release" { "release" } else { "dev" };
    let manifest = fs::read_to_string("Cargo.toml").unwrap_or_default();
    for (key, default) in PROFILE_KEYS {
        let env_key = format!(
            "CARGO_PROFILE_{}_{}",
            table.to_uppercase(),
            key.to_uppercase().replace('-', "_")
        );
        println!("cargo:rerun-if-env-changed={env_key}");
        let value = env::var(&env_key)
            .ok()
            .or_else(|| profile_value(&manifest, table, key))
            .unwrap_or_else(|| default.to_owned());
        emit(&key.to_uppercase().replace('-', "_"), &value);
    }
}

/// Crates whose resolved versions the results record.
const RECORDED_CRATES: [&str; 9] = [
    "candle-core",
    "candle-nn",
    "gemm",
    "actix-web",
    "actix-http",
    "tokio",
    "tokio-postgres",
    "deadpool-postgres",
    "ort",
];

/// The version Cargo.lock resolved for `name` (the first, should there be several).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(version.trim_matches('"').to_owned());
        }
    }
    None
}

fn emit(name: &str, value: &str) {
    println!("cargo:rustc-env=RANKBENCH_BUILD_{name}={value}");
}

/// `key = value` from the `[profile.<table>]` section of a Cargo.toml, quotes removed.
fn profile_value(manifest: &str, table: &str, key: &str) -> Option<String> {
    let header = format!("[profile.{table}]");
    let mut in_table = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_table = line == header;
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            if name.trim() == key {
                return Some(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    None
}
