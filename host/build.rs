//! Builds the default guest (`guest/`, for `wasm32-wasip2`, release) so the host can embed it.
//!
//! The guest is built by a nested `cargo build` in its own target directory (`guest-wasm` under
//! the workspace target directory) so that it never waits on the lock of the outer build. Set
//! `TRACEKEEPER_GUEST_WASM=/path/to/guest.wasm` to embed a prebuilt component instead.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Without the `runtime` feature (the fuzz targets' build) no guest is embedded.
    if std::env::var_os("CARGO_FEATURE_RUNTIME").is_none() {
        println!("cargo:rerun-if-changed=build.rs");
        return;
    }
    println!("cargo:rerun-if-env-changed=TRACEKEEPER_GUEST_WASM");
    if let Ok(prebuilt) = std::env::var("TRACEKEEPER_GUEST_WASM") {
        println!("cargo:rerun-if-changed={prebuilt}");
        println!("cargo:rustc-env=TRACEKEEPER_DEFAULT_GUEST={prebuilt}");
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.clone());
    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "abi/src",
        "abi/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "-p",
            "tracekeeper-guest",
            "--target",
            "wasm32-wasip2",
            "--release",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Flags meant for the host build (coverage, sanitizers, clippy's wrapper) must not leak into
    // the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    // The embedded guest needs no debug info; stripping it keeps the binary (and compile
    // time of the component at start-up) small. (Fat LTO made its `ingest` about 5% faster in
    // criterion but held about 8 MiB more RSS under a steady load: not kept; BENCHMARKS.md.)
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    let status = cmd.status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the default guest failed ({s}); is the wasm32-wasip2 target installed? \
             (`rustup target add wasm32-wasip2`)"
        ),
        Err(e) => panic!("could not run cargo to build the default guest: {e}"),
    }
    let wasm = target_dir.join("wasm32-wasip2/release/tracekeeper_guest.wasm");
    if !wasm.exists() {
        panic!("the guest build did not produce {}", wasm.display());
    }
    println!(
        "cargo:rustc-env=TRACEKEEPER_DEFAULT_GUEST={}",
        wasm.display()
    );
}
