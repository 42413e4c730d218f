//! Builds the wasm parts for wasm32-wasip2: the default worker, which
//! `wasm::engine::DEFAULT_WORKER` embeds from OUT_DIR, and the store adapter for
//! Spin in both configurations. It then composes the worker with each
//! adapter into single components (`target/spin/turserver-spin.wasm`, with
//! Spin variables; `target/spin/turserver-wasi.wasm`, with environment
//! variables) for runtimes without Spin's component dependencies.
//!
//! The nested cargo uses its own target directory (`target/worker`) so it
//! never waits on the outer build's lock.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("host/ has a parent")?.to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for watched in [
        "protocol/src",
        "protocol/Cargo.toml",
        "worker/src",
        "worker/Cargo.toml",
        "worker/build.rs",
        "worker/adapter/src",
        "worker/adapter/Cargo.toml",
        "worker/adapter/build.rs",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=TURSERVER_WORKER_WASM");

    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let wasm_dir = target.join("worker");
    let built = |name: &str| wasm_dir.join("wasm32-wasip2/release").join(name);

    wasm_build(&root, &wasm_dir, &["--package", "turserver-worker", "--package", "turserver-store-adapter"])?;
    let worker = std::fs::read(built("turserver_worker.wasm")).context("reading the built worker")?;
    let adapter_env = std::fs::read(built("turserver_store_adapter.wasm")).context("reading the built adapter")?;
    wasm_build(&root, &wasm_dir, &["--package", "turserver-store-adapter", "--features", "spin"])?;
    let adapter_spin = std::fs::read(built("turserver_store_adapter.wasm")).context("reading the built adapter")?;

    let spin_dir = target.join("spin");
    std::fs::create_dir_all(&spin_dir)?;
    write(&spin_dir.join("turserver-spin.wasm"), &compose(&worker, &adapter_spin)?)?;
    write(&spin_dir.join("turserver-wasi.wasm"), &compose(&worker, &adapter_env)?)?;
    // For composing other workers with it (the tests' own).
    write(&spin_dir.join("store-adapter-env.wasm"), &adapter_env)?;

    // A prebuilt worker can stand in for the embedded one (e.g. for packaging).
    let embedded = match std::env::var("TURSERVER_WORKER_WASM") {
        Ok(prebuilt) => std::fs::read(&prebuilt).with_context(|| format!("reading {prebuilt}"))?,
        Err(_) => worker,
    };
    write(&out_dir.join("worker.wasm"), &embedded)
}

/// `cargo build --target wasm32-wasip2 --release` of the given packages.
fn wasm_build(root: &Path, target_dir: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--target", "wasm32-wasip2", "--release"])
        .args(packages)
        .arg("--target-dir")
        .arg(target_dir)
        // The outer build's flags are for the host triple, not for wasm.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .status()
        .context("running cargo to build the wasm components")?;
    if !status.success() {
        bail!(
            "building {packages:?} for wasm32-wasip2 failed. If the target is missing, run:\n    \
             rustup target add wasm32-wasip2"
        );
    }
    Ok(())
}

/// The worker with its `turserver:store/files` import satisfied by the
/// adapter's export (what `wac plug` does).
fn compose(worker: &[u8], adapter: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let worker = Package::from_bytes("turserver:worker", None, worker.to_vec(), graph.types_mut())?;
    let worker = graph.register_package(worker)?;
    let adapter = Package::from_bytes("turserver:store-adapter", None, adapter.to_vec(), graph.types_mut())?;
    let adapter = graph.register_package(adapter)?;
    wac_graph::plug(&mut graph, vec![adapter], worker).context("plugging the adapter into the worker")?;
    graph.encode(EncodeOptions::default()).context("encoding the composed component")
}

/// Writes only when the bytes changed, so dependents are not rebuilt.
fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
