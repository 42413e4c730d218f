//! On-disk cache of compiled workers, so a restart or a swap back to a known
//! worker skips Cranelift.
//!
//! An entry is named by the component's hash and the engine's compatibility
//! hash (compiler version and settings), and holds the SHA-256 of the
//! artifact followed by the artifact. Deserialising a compiled artifact
//! trusts its machine code, so an entry is loaded only when its checksum
//! matches; anything else is deleted and rebuilt.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use wasmtime::component::Component;
use wasmtime::Engine;

pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> ArtifactCache {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ArtifactCache { dir, engine_key: format!("{:016x}", h.finish()) }
    }

    fn entry(&self, component_hash: &str) -> PathBuf {
        self.dir.join(format!("{component_hash}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of a component, if a sound one exists.
    pub fn load(&self, engine: &Engine, component_hash: &str) -> Option<Component> {
        let path = self.entry(component_hash);
        let bytes = std::fs::read(&path).ok()?;
        let sound = bytes.len() > 32 && Sha256::digest(&bytes[32..]).as_slice() == &bytes[..32];
        if !sound {
            tracing::warn!(path = %path.display(), "ignoring a corrupt compiled-worker cache entry");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // SAFETY: the artifact was written by `store` below from
        // `Component::serialize` (the checksum proves it is unaltered), and
        // wasmtime checks that it was compiled for this engine's settings.
        match unsafe { Component::deserialize(engine, &bytes[32..]) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(cause = %format!("{e:#}"), path = %path.display(), "ignoring an unusable cache entry");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Saves a compilation; failures only cost a recompilation later.
    pub fn store(&self, component_hash: &str, component: &Component) {
        let result = (|| -> anyhow::Result<()> {
            let artifact = component.serialize().map_err(anyhow::Error::from)?;
            std::fs::create_dir_all(&self.dir)?;
            let path = self.entry(component_hash);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut data = Sha256::digest(&artifact).to_vec();
            data.extend_from_slice(&artifact);
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(cause = %format!("{e:#}"), "could not cache the compiled worker");
        }
    }
}
