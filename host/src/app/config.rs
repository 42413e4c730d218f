//! Command line and environment configuration, validated before anything
//! binds a socket or opens a database.

use crate::store::Invalidation;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Address served when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Data directory when `--data-dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "./turserver-data";
/// How often a replica pulls from the primary when `--sync-interval` is not given.
pub const DEFAULT_SYNC_INTERVAL: &str = "1s";
/// Largest accepted upload when `--max-upload-size` is not given (1 GiB).
pub const DEFAULT_MAX_UPLOAD: u64 = 1 << 30;
/// Largest linear memory one worker instance may grow to (MiB).
pub const DEFAULT_WORKER_MEMORY_MIB: u64 = 128;
/// How long a worker instance may run without progress.
pub const DEFAULT_WORKER_DEADLINE: &str = "10s";
/// How long a client may take to send a request's headers (and an idle
/// HTTP/1.1 keep-alive connection waits for its next request).
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "20s";
/// How long a connection may stay open with no byte moving either way.
pub const DEFAULT_IDLE_TIMEOUT: &str = "75s";
/// How long a request body may pause between two pieces.
pub const DEFAULT_BODY_TIMEOUT: &str = "30s";
/// Concurrent h2 streams per connection (nginx's default too).
pub const DEFAULT_H2_STREAMS: u32 = 128;
/// Worker instances that may exist at once.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
/// Responses from the worker one connection may have under way at once.
pub const DEFAULT_INSTANCES_PER_CONNECTION: u32 = 16;

#[derive(Debug, Parser)]
#[command(name = "turserver", version, about = "Edge file server: a wasm worker over a libSQL embedded replica")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve files over HTTP.
    Serve(ServeArgs),
    /// Publish a folder (e.g. your site's build output) in one atomic step,
    /// sending only the files that changed.
    Deploy(DeployArgs),
    /// Upload one file.
    Put(PutArgs),
    /// Download one file (to stdout, or to -o FILE).
    Get(GetArgs),
    /// List stored files.
    Ls(LsArgs),
    /// Remove files.
    Rm(RmArgs),
    /// Show an edge's status: mode, worker, replication.
    Status(StatusArgs),
    /// Manage the worker of running servers.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Manage the keys signed tokens are verified with, on every edge.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign tokens that allow actions on some paths only.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Sign links that let anyone download one file until they expire.
    #[command(subcommand)]
    Url(UrlCommand),
}

#[derive(Debug, Subcommand)]
pub enum UrlCommand {
    /// Print a link to one file that works without a token until it
    /// expires (GET and HEAD only).
    Sign(UrlSignArgs),
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Example:\n  turserver url sign members/report.pdf --key ci.key --ttl 10m --url https://files.example.com")]
pub struct UrlSignArgs {
    /// The file's path (as stored, e.g. `members/report.pdf`).
    pub path: String,
    /// The private key file (from `keys generate`) to sign with; its
    /// public half must be in the edges' key set.
    #[arg(long)]
    pub key: PathBuf,
    /// How long the link works.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The edge's address, to print a whole URL (else the path and query).
    #[arg(long, env = "TURSERVER_URL")]
    pub url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a signing key in a new file (it stays on this machine); print
    /// its kid.
    Generate(KeysGenerateArgs),
    /// Add a signing key's public half to the key set of every edge (as
    /// `next`: accepted, not yet current).
    Add(KeysAddArgs),
    /// Make a key the current one; the current one becomes `previous`,
    /// still accepted until it is revoked.
    Promote(KeyArgs),
    /// Stop accepting tokens signed with a key, on every edge.
    Revoke(KeyArgs),
    /// List the key set.
    Ls(KeysLsArgs),
}

/// Signature algorithms for new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    #[value(name = "ES256")]
    Es256,
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Example:\n  turserver keys generate --out ci.key")]
pub struct KeysGenerateArgs {
    /// The file to write the private key to (PKCS#8 PEM, readable by you
    /// only); it must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "EdDSA")]
    pub alg: KeyAlgorithm,
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  turserver keys add --key ci.key --url http://127.0.0.1:8080 --token dev-token\n  \
    turserver keys add --link-secret --current --url http://127.0.0.1:8080 --token dev-token")]
pub struct KeysAddArgs {
    /// The private key file (from `keys generate`); only its public half
    /// is sent.
    #[arg(long, required_unless_present = "link_secret")]
    pub key: Option<PathBuf>,
    /// Instead of a key: a link secret the edges generate and keep, with
    /// which they sign links for `POST /_api/links`.
    #[arg(long, conflicts_with = "key")]
    pub link_secret: bool,
    /// Add it as the current key at once (the current one becomes
    /// `previous`), rather than as `next`.
    #[arg(long)]
    pub current: bool,
    /// The edge, and its write token.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// The key's kid (`keys ls` lists them).
    pub kid: String,
    /// The edge, and its write token.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct KeysLsArgs {
    /// The raw key set document.
    #[arg(long)]
    pub json: bool,
    /// The edge, and its write token.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token signed with a key file, allowing what `--allow` says.
    Issue(TokenIssueArgs),
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  turserver token issue --key ci.key --sub ci --allow 'docs/**:write,delete' --ttl 1h\n  \
    turserver token issue --key ci.key --sub bob --allow 're:users/bob/.*:write' --ttl 10m")]
pub struct TokenIssueArgs {
    /// The private key file (from `keys generate`) to sign with.
    #[arg(long)]
    pub key: PathBuf,
    /// Who the token is for (its `sub`, in the edges' logs).
    #[arg(long)]
    pub sub: String,
    /// PATTERN:ACTIONS, e.g. `docs/**:write,delete`. Patterns are globs
    /// over store paths (`*` within a folder, `**` across) or `re:REGEX`;
    /// actions are read, write, delete, list. Repeat for more rules.
    #[arg(long, value_name = "PATTERN:ACTIONS")]
    pub allow: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The token's `aud` (when the edges check one, `--token-audience`).
    #[arg(long)]
    pub aud: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Store a worker component on the primary; every edge swaps to it on
    /// its next sync.
    Deploy(WorkerDeployArgs),
}

/// Where the client commands send their requests.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The edge to talk to.
    #[arg(long, env = "TURSERVER_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The edge's write token (never printed).
    #[arg(long, env = "TURSERVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Times a request is sent again after a lost connection or a 503,
    /// waiting longer each time (as long as `Retry-After` asks, when given).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerDeployArgs {
    /// The component (.wasm) to deploy.
    pub file: PathBuf,
    /// The edge, and its token (also read from `TURSERVER_WRITE_TOKEN`).
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  turserver deploy dist --url http://127.0.0.1:8080 --token dev-token\n  \
    turserver deploy public --prefix docs --delete --exclude '*.map' --dry-run")]
pub struct DeployArgs {
    /// The folder to publish; its files are stored under --prefix with
    /// their paths inside it (`.git/` is always skipped).
    pub dir: PathBuf,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Store the files under this folder of the site (default: the root).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Also remove stored files under --prefix that are not in DIR, in the
    /// same transaction.
    #[arg(long)]
    pub delete: bool,
    /// Print what would be uploaded, kept and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave out files matching this glob (relative to DIR, gitignore
    /// syntax); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Honour `.gitignore` and `.ignore` files inside DIR.
    #[arg(long)]
    pub respect_ignore: bool,
    /// Threads hashing files (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// The local file.
    pub file: PathBuf,
    /// Where to store it, e.g. `docs/index.html`.
    pub path: String,
    /// Its media type (default: from the path's extension).
    #[arg(long)]
    pub content_type: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The stored path, e.g. `docs/index.html`.
    pub path: String,
    /// Write here instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Only paths starting with this.
    pub prefix: Option<String>,
    /// Size, last modified and media type too.
    #[arg(short, long)]
    pub long: bool,
    /// A JSON array of entries.
    #[arg(long, conflicts_with = "long")]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// Stored paths to remove.
    pub paths: Vec<String>,
    /// Remove every file under this folder, in one transaction.
    #[arg(long, short, value_name = "PREFIX")]
    pub recursive: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The raw status document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the first log line
    /// prints the bound address).
    #[arg(long, env = "TURSERVER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory holding the local database or the embedded replica
    /// (with --sites: one folder per site under `sites/`).
    #[arg(long, env = "TURSERVER_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Serve many sites, each with its own database, routed by the request's
    /// host: a TOML file, or a folder of `*.toml` files (re-read on SIGHUP
    /// and when they change). See the README's "Many sites".
    #[arg(long, env = "TURSERVER_SITES")]
    pub sites: Option<PathBuf>,

    /// With --sites: a site that has had no request for this long is
    /// closed (its syncs stop, its memory is freed; its replica stays on
    /// disk for a fast reopen).
    #[arg(long, env = "TURSERVER_SITE_IDLE", default_value = "10m", value_parser = parse_duration)]
    pub site_idle: Duration,

    /// With --sites: most sites open at once; opening one more closes the
    /// one whose last request is oldest.
    #[arg(long, env = "TURSERVER_MAX_OPEN_SITES", default_value_t = 100)]
    pub max_open_sites: usize,

    /// URL of the libSQL primary (e.g. `https://db.turso.io` or
    /// `http://127.0.0.1:8081`). Without it the data lives in a local file.
    #[arg(long, env = "TURSERVER_PRIMARY_URL")]
    pub primary_url: Option<String>,

    /// Auth token for the primary.
    #[arg(long, env = "TURSERVER_PRIMARY_TOKEN", hide_env_values = true)]
    pub primary_token: Option<String>,

    /// How often the replica pulls from the primary, e.g. `1s`, `250ms`,
    /// when it cannot follow the primary's commits (see --no-commit-stream).
    #[arg(long, env = "TURSERVER_SYNC_INTERVAL", default_value = DEFAULT_SYNC_INTERVAL, value_parser = parse_duration)]
    pub sync_interval: Duration,

    /// Sync only every --sync-interval. By default the replica follows the
    /// primary's replication stream and syncs as soon as the primary
    /// commits (falling back to the interval while the stream is unavailable).
    #[arg(long, env = "TURSERVER_NO_COMMIT_STREAM")]
    pub no_commit_stream: bool,

    /// Accept PUTs and DELETEs of single files while the primary is
    /// unreachable: each is kept in a queue on this edge's disk (written
    /// through before the answer, 202 Accepted with a status URL), shown
    /// to this edge's reads at once, and applied to the primary in order
    /// when it returns. Off: such writes get 503, as they do by default.
    #[arg(long, env = "TURSERVER_WRITE_QUEUE")]
    pub write_queue: bool,

    /// Bearer token that allows writes. Without it, every write is refused.
    #[arg(long, env = "TURSERVER_WRITE_TOKEN", hide_env_values = true)]
    pub write_token: Option<String>,

    /// Worker component to run instead of the one built into the binary.
    #[arg(long, env = "TURSERVER_WORKER")]
    pub worker: Option<PathBuf>,

    /// Largest accepted upload in bytes.
    #[arg(long, env = "TURSERVER_MAX_UPLOAD_SIZE", default_value_t = DEFAULT_MAX_UPLOAD)]
    pub max_upload_size: u64,

    /// Largest linear memory a worker instance may use, in MiB.
    #[arg(long, env = "TURSERVER_WORKER_MEMORY_MIB", default_value_t = DEFAULT_WORKER_MEMORY_MIB)]
    pub worker_memory_mib: u64,

    /// Memory for the edge response cache, in MiB; 0 turns it off.
    #[arg(long, env = "TURSERVER_RESPONSE_CACHE_MIB", default_value_t = 64)]
    pub response_cache_mib: u64,

    /// What a change to the store makes stale in the response and read
    /// caches: `paths` (only what was read from a changed path; anything
    /// site-wide still drops everything) or `everything`.
    #[arg(long, env = "TURSERVER_CACHE_INVALIDATION", default_value = "paths", value_parser = parse_invalidation)]
    pub cache_invalidation: Invalidation,

    /// Also answer `/_turserver/native/{path}` straight from the store,
    /// without the worker: for benchmarks that isolate the worker's cost.
    #[arg(long, env = "TURSERVER_BENCH_NATIVE", hide = true)]
    pub bench_native: bool,

    /// Discard the local replica and copy the primary again (for a replica
    /// that is damaged or was made from another primary).
    #[arg(long, env = "TURSERVER_REBUILD_REPLICA")]
    pub rebuild_replica: bool,

    /// How long a read that carries a replication position (from a write on
    /// any edge) may wait for this edge to catch up before it gets 503.
    #[arg(long, env = "TURSERVER_CONSISTENCY_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub consistency_wait: Duration,

    /// Also serve the store to workers running elsewhere (on Spin, through
    /// the store adapter) on this address. Keep it private: it needs
    /// `--sidecar-token`, and it must differ from `--listen`.
    #[arg(long, env = "TURSERVER_SIDECAR_LISTEN")]
    pub sidecar_listen: Option<SocketAddr>,

    /// Bearer token the store adapter must send to the sidecar (Spin's
    /// secret variable `sidecar_token`).
    #[arg(long, env = "TURSERVER_SIDECAR_TOKEN", hide_env_values = true)]
    pub sidecar_token: Option<String>,

    /// How long a worker instance may run without progress (no body bytes
    /// moving, no store calls) before it is stopped with 504.
    #[arg(long, env = "TURSERVER_WORKER_DEADLINE", default_value = DEFAULT_WORKER_DEADLINE, value_parser = parse_duration)]
    pub worker_deadline: Duration,

    /// How long a response may go without the client taking any of it (a
    /// write waiting on HTTP/1.1, a shut h2 flow-control window) before it
    /// is cut off and its worker instance freed (nginx's `send_timeout`).
    #[arg(long, env = "TURSERVER_SEND_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// How long a client may take to send a request's headers; also how
    /// long an idle HTTP/1.1 keep-alive connection waits for its next request.
    #[arg(long, env = "TURSERVER_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a connection (HTTP/1.1 or h2) may stay open with no byte
    /// moving either way.
    #[arg(long, env = "TURSERVER_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long a request body may pause between two pieces before the
    /// request fails (nginx's `client_body_timeout`).
    #[arg(long, env = "TURSERVER_BODY_TIMEOUT", default_value = DEFAULT_BODY_TIMEOUT, value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Most client connections open at once, both ports together; past it,
    /// new connections wait until one closes. Default: the file descriptor
    /// limit (raised to its hard limit at startup) less 256.
    #[arg(long, env = "TURSERVER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most connections one client address may hold open on the public port
    /// (an IPv6 address counts by its /64); past it, a new connection from
    /// that address is answered 503 and closed. Off by default: behind a
    /// proxy or load balancer every client shares the proxy's address.
    #[arg(long, env = "TURSERVER_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<u32>,

    /// Worker instances that may exist at once: the requests the worker can
    /// serve concurrently (each holds a pooled slot of `--worker-memory-mib`
    /// address space). Past it a request gets 503.
    #[arg(long, env = "TURSERVER_MAX_INSTANCES", default_value_t = DEFAULT_MAX_INSTANCES)]
    pub max_instances: u32,

    /// Most single uploads one transaction on the primary publishes (group
    /// commit: uploads that finish while a commit is under way share the
    /// next one); 1 publishes each in its own transaction.
    #[arg(long, env = "TURSERVER_COMMIT_GROUP", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub commit_group: u16,

    /// The `aud` claim signed tokens must carry (unchecked when not set).
    #[arg(long, env = "TURSERVER_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// A JSON Web Key Set whose Ed25519 and P-256 keys also verify signed
    /// tokens: fetched at start and every 5 minutes, and again (at most
    /// once a minute) when a token names a key it does not know.
    #[arg(long, env = "TURSERVER_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// How long the change log (`/_api/changes`, `/_api/events`) keeps a
    /// change; a cursor older than what is kept gets 410 and must resync.
    #[arg(long, env = "TURSERVER_CHANGES_KEEP_FOR", default_value = "7d", value_parser = parse_duration)]
    pub changes_keep_for: Duration,

    /// Most changes the change log keeps (the oldest go first).
    #[arg(long, env = "TURSERVER_CHANGES_KEEP", default_value_t = 1_000_000)]
    pub changes_keep: u64,

    /// How often `/_turserver/usage` (and the dashboard's charts) gain a
    /// point; the last hour of points is kept.
    #[arg(long, env = "TURSERVER_USAGE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub usage_interval: Duration,

    /// Most concurrent h2 streams on one connection.
    #[arg(long, env = "TURSERVER_H2_MAX_STREAMS", default_value_t = DEFAULT_H2_STREAMS)]
    pub h2_max_streams: u32,

    /// Responses from the worker one connection may have under way at once
    /// (running in an instance, or buffered until the client takes them);
    /// an h2 connection's further streams wait for one of them to finish,
    /// so no single client takes every instance or buffers without bound.
    #[arg(long, env = "TURSERVER_INSTANCES_PER_CONNECTION", default_value_t = DEFAULT_INSTANCES_PER_CONNECTION)]
    pub instances_per_connection: u32,
}

fn parse_invalidation(s: &str) -> Result<Invalidation, String> {
    match s {
        "paths" => Ok(Invalidation::Paths),
        "everything" => Ok(Invalidation::Everything),
        _ => Err("expected `paths` or `everything`".into()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

impl ServeArgs {
    /// Checks what clap cannot: values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.primary_url {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("http" | "https" | "libsql")) {
                bail!("--primary-url must start with http://, https:// or libsql:// (got {url:?})");
            }
        } else if self.primary_token.is_some() {
            bail!("--primary-token was given without --primary-url");
        }
        if self.write_queue && self.primary_url.is_none() && self.sites.is_none() {
            bail!("--write-queue needs --primary-url: a local database takes every write itself");
        }
        if self.sync_interval < Duration::from_millis(10) {
            bail!("--sync-interval must be at least 10ms");
        }
        if matches!(&self.write_token, Some(t) if t.trim().is_empty()) {
            bail!("--write-token must not be empty");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.usage_interval) {
            bail!("--usage-interval must be between 1s and 10m");
        }
        if self.worker_deadline < Duration::from_millis(50) {
            bail!("--worker-deadline must be at least 50ms");
        }
        if self.send_timeout < Duration::from_secs(1) {
            // Shorter cuts off clients on any passing stall of the network.
            bail!("--send-timeout must be at least 1s");
        }
        for (flag, value) in [
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--body-timeout", self.body_timeout),
        ] {
            if value < Duration::from_secs(1) {
                bail!("{flag} must be at least 1s");
            }
        }
        if self.max_connections == Some(0) {
            bail!("--max-connections must be at least 1");
        }
        if self.max_connections_per_ip == Some(0) {
            bail!("--max-connections-per-ip must be at least 1 (leave it out for no limit)");
        }
        if self.max_instances == 0 || self.max_instances > 100_000 {
            bail!("--max-instances must be between 1 and 100000");
        }
        if let Some(url) = &self.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--jwks-url must start with http:// or https:// (got {url:?})");
            }
        }
        if self.changes_keep == 0 {
            bail!("--changes-keep must be at least 1");
        }
        if self.h2_max_streams == 0 {
            bail!("--h2-max-streams must be at least 1");
        }
        if self.instances_per_connection == 0 {
            bail!("--instances-per-connection must be at least 1");
        }
        if self.worker_memory_mib == 0 || self.worker_memory_mib > 4096 {
            bail!("--worker-memory-mib must be between 1 and 4096");
        }
        match (&self.sidecar_listen, &self.sidecar_token) {
            (Some(_), None) => bail!("--sidecar-listen needs --sidecar-token"),
            (None, Some(_)) => bail!("--sidecar-token was given without --sidecar-listen"),
            (Some(addr), Some(token)) => {
                if token.trim().is_empty() {
                    bail!("--sidecar-token must not be empty");
                }
                if self.write_token.as_deref() == Some(token.as_str()) {
                    bail!("--sidecar-token must differ from --write-token");
                }
                if addr.port() != 0 && addr.port() == self.listen.port() {
                    bail!("--sidecar-listen must not share the public port {}", self.listen.port());
                }
            }
            (None, None) => {}
        }
        if let Some(w) = &self.worker {
            std::fs::metadata(w).with_context(|| format!("--worker {}", w.display()))?;
        }
        if self.sites.is_some() {
            // What one site's flags set, each site's entry sets.
            let per_site = "with --sites, set it in each site's entry of the sites file";
            for (flag, given, instead) in [
                ("--primary-url", self.primary_url.is_some(), per_site),
                ("--primary-token", self.primary_token.is_some(), per_site),
                ("--write-token", self.write_token.is_some(), per_site),
                ("--sidecar-listen", self.sidecar_listen.is_some(), "the sidecar serves a single site"),
                ("--rebuild-replica", self.rebuild_replica, "remove the site's folder under DATA_DIR/sites/ instead"),
            ] {
                if given {
                    bail!("{flag} cannot be used with --sites: {instead}");
                }
            }
        }
        if self.site_idle < Duration::from_secs(1) {
            bail!("--site-idle must be at least 1s");
        }
        if self.max_open_sites == 0 {
            bail!("--max-open-sites must be at least 1");
        }
        Ok(())
    }

    /// The primary URL in the form the replica client takes (`libsql://` is
    /// Turso's alias for `https://`).
    pub fn primary_http_url(&self) -> Option<String> {
        self.primary_url.as_ref().map(|u| match u.strip_prefix("libsql://") {
            Some(rest) => format!("https://{rest}"),
            None => u.clone(),
        })
    }
}
