//! `keys`, `token` and `url`: signing keys kept in files on the issuer's
//! machine, their public halves in every edge's key set, and the tokens and
//! links signed with them.

use super::Remote;
use crate::app::config::{KeyAlgorithm, KeyArgs, KeysAddArgs, KeysGenerateArgs, KeysLsArgs, TokenIssueArgs, UrlSignArgs};
use crate::http::tokens::{rule_claim, url_message};
use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// A private signing key, as read from its file.
struct SigningKey {
    alg: KeyAlgorithm,
    pkcs8: Vec<u8>,
    /// The public key: Ed25519's 32 bytes, or P-256's uncompressed point.
    public: Vec<u8>,
}

impl SigningKey {
    fn read(path: &Path) -> anyhow::Result<SigningKey> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the key file {}", path.display()))?;
        let pem = pem::parse(&text).with_context(|| format!("{} is not a PEM key file (make one with `turserver keys generate`)", path.display()))?;
        if pem.tag() != "PRIVATE KEY" {
            bail!("{} holds a {:?}, not a PRIVATE KEY (make one with `turserver keys generate`)", path.display(), pem.tag());
        }
        let pkcs8 = pem.contents().to_vec();
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8) {
            let public = pair.public_key().as_ref().to_vec();
            return Ok(SigningKey { alg: KeyAlgorithm::EdDsa, pkcs8, public });
        }
        let rng = ring::rand::SystemRandom::new();
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng) {
            let public = pair.public_key().as_ref().to_vec();
            return Ok(SigningKey { alg: KeyAlgorithm::Es256, pkcs8, public });
        }
        bail!("{} is neither an Ed25519 nor a P-256 private key", path.display())
    }

    /// The key's id: the first 16 hex digits of its public key's SHA-256,
    /// so the same key always has the same kid.
    fn kid(&self) -> String {
        hex::encode(&Sha256::digest(&self.public)[..8])
    }

    fn jwt_algorithm(&self) -> jsonwebtoken::Algorithm {
        match self.alg {
            KeyAlgorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            KeyAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
        match self.alg {
            KeyAlgorithm::EdDsa => jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8),
            KeyAlgorithm::Es256 => jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        }
    }

    /// The public half, as the edges' key set takes it.
    fn public_jwk(&self, state: &str) -> serde_json::Value {
        match self.alg {
            KeyAlgorithm::EdDsa => serde_json::json!({
                "kid": self.kid(), "alg": "EdDSA", "x": URL_SAFE_NO_PAD.encode(&self.public), "state": state,
            }),
            KeyAlgorithm::Es256 => serde_json::json!({
                "kid": self.kid(), "alg": "ES256", "state": state,
                "x": URL_SAFE_NO_PAD.encode(&self.public[1..33]), "y": URL_SAFE_NO_PAD.encode(&self.public[33..65]),
            }),
        }
    }
}

pub async fn keys_generate(args: KeysGenerateArgs) -> anyhow::Result<()> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = match args.alg {
        KeyAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating an Ed25519 key"))?,
        KeyAlgorithm::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?,
    };
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&args.out)
        .with_context(|| format!("creating {} (an existing key file is never overwritten)", args.out.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", args.out.display()))?;
    let key = SigningKey::read(&args.out)?;
    println!("{}", key.kid());
    eprintln!(
        "wrote {} (keep it secret); next: turserver keys add --key {} --url URL --token WRITE_TOKEN",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

pub async fn keys_add(args: KeysAddArgs) -> anyhow::Result<()> {
    let state = if args.current { "current" } else { "next" };
    let body = match &args.key {
        Some(file) => SigningKey::read(file)?.public_jwk(state),
        None => serde_json::json!({ "kid": "", "alg": "HS256", "state": state }),
    };
    let remote = Remote::new(&args.remote)?;
    let resp = remote
        .send_simple(|| remote.request(Method::POST, remote.url("_turserver/keys")).json(&body))
        .await
        .context("the edge refused the key")?;
    print_keys(resp.json().await.context("reading the key set")?);
    Ok(())
}

pub async fn keys_change(args: KeyArgs, op: &str) -> anyhow::Result<()> {
    let remote = Remote::new(&args.remote)?;
    let url = remote.url(&format!("_turserver/keys/{}/{op}", args.kid));
    let resp = remote.send_simple(|| remote.request(Method::POST, url.clone())).await?;
    print_keys(resp.json().await.context("reading the key set")?);
    Ok(())
}

pub async fn keys_ls(args: KeysLsArgs) -> anyhow::Result<()> {
    let remote = Remote::new(&args.remote)?;
    let resp = remote.send_simple(|| remote.request(Method::GET, remote.url("_turserver/keys"))).await?;
    let set: serde_json::Value = resp.json().await.context("reading the key set")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&set)?);
    } else {
        print_keys(set);
    }
    Ok(())
}

/// The key set as a table: kid, algorithm, state, when added.
fn print_keys(set: serde_json::Value) {
    let keys = set["keys"].as_array().cloned().unwrap_or_default();
    if keys.is_empty() {
        println!("no keys: signed tokens are refused (add one with `turserver keys add`)");
        return;
    }
    println!("{:<18} {:<6} {:<9} added", "kid", "alg", "state");
    for k in keys {
        let added = k["added"].as_u64().map(|t| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)));
        println!(
            "{:<18} {:<6} {:<9} {}",
            k["kid"].as_str().unwrap_or("?"),
            k["alg"].as_str().unwrap_or("?"),
            k["state"].as_str().unwrap_or("?"),
            added.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
        );
    }
}

pub async fn url_sign(args: UrlSignArgs) -> anyhow::Result<()> {
    let key = SigningKey::read(&args.key)?;
    let path = super::local_store_path(&args.path).map_err(|why| anyhow::anyhow!("{why}"))?;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + args.ttl.as_secs().max(1);
    let sig = jsonwebtoken::crypto::sign(url_message(&path, exp).as_bytes(), &key.encoding_key(), key.jwt_algorithm())
        .context("signing the link")?;
    let encoded: Vec<String> =
        path.split('/').map(|s| percent_encoding::utf8_percent_encode(s, super::SEGMENT).to_string()).collect();
    let base = args.url.as_deref().map(|u| u.trim_end_matches('/')).unwrap_or("");
    println!("{base}/{}?exp={exp}&kid={}&sig={sig}", encoded.join("/"), key.kid());
    Ok(())
}

pub async fn token_issue(args: TokenIssueArgs) -> anyhow::Result<()> {
    let key = SigningKey::read(&args.key)?;
    let allow = args.allow.iter().map(|r| rule_claim(r).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
    if allow.is_empty() {
        eprintln!("note: no --allow rule, so the token allows nothing");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({
        "sub": args.sub,
        "iat": now,
        "exp": now + args.ttl.as_secs().max(1),
        "allow": allow,
    });
    if let Some(aud) = args.aud {
        claims["aud"] = aud.into();
    }
    let mut header = jsonwebtoken::Header::new(key.jwt_algorithm());
    header.kid = Some(key.kid());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding_key()).context("signing the token")?;
    println!("{token}");
    Ok(())
}
