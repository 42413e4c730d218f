//! Builds the default worker for wasm32-wasip2 and places it in OUT_DIR,
//! where `runtime::DEFAULT_WORKER` embeds it. The nested cargo uses its own
//! target directory (`target/worker`) so it never waits on the outer build's
//! lock.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("host/ has a parent")?.to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for watched in ["worker/src", "worker/Cargo.toml", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=TURSERVER_WORKER_WASM");

    // A prebuilt worker can stand in (e.g. for packaging).
    if let Ok(prebuilt) = std::env::var("TURSERVER_WORKER_WASM") {
        std::fs::copy(&prebuilt, out_dir.join("worker.wasm")).with_context(|| format!("copying {prebuilt}"))?;
        return Ok(());
    }

    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("worker");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--package", "turserver-worker", "--target", "wasm32-wasip2", "--release"])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags are for the host triple, not for wasm.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_PROFILE_RELEASE_DEBUG")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .status()
        .context("running cargo to build the worker")?;
    if !status.success() {
        bail!(
            "building the worker for wasm32-wasip2 failed. If the target is missing, run:\n    \
             rustup target add wasm32-wasip2"
        );
    }
    let wasm = target_dir.join("wasm32-wasip2/release/turserver_worker.wasm");
    std::fs::copy(&wasm, out_dir.join("worker.wasm")).with_context(|| format!("copying {}", wasm.display()))?;
    Ok(())
}
