use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use turserver::app::{self, Cli, Command, KeysCommand, TokenCommand, UrlCommand, WorkerCommand};

/// Applied when RUST_LOG is unset. libSQL's replication client warns about
/// every slow frame fetch; the sync loop reports real failures itself.
const DEFAULT_LOG: &str = "info,libsql=warn,libsql::replication=error,libsql_replication=error,\
h2=warn,tonic=warn,hyper=warn,wasmtime=warn,cranelift=warn";

/// Rust's allocations (requests, responses, caches, the wasm runtime) go to
/// mimalloc: with many sites open, glibc's arenas spent a measurable share of
/// each request consolidating and searching free lists. SQLite, a C library,
/// still allocates through glibc's malloc, tuned by `tune_allocator`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SQLite allocates through glibc's malloc. Serving a large body has SQLite
/// build a 1 MiB blob result per chunk. Above glibc's default mmap threshold
/// each of those is a fresh mapping, faulted in page by page and zeroed;
/// keeping them on the heap lets the memory be reused.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Nor hand freed buffers back to the kernel at once, only to fault
        // them in again for the next chunk.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime")
        .block_on(run())
}

async fn run() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let cli = Cli::parse();
    let client = |result: anyhow::Result<()>| match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    match cli.command {
        Command::Serve(args) => match turserver::app::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Deploy(args) => client(app::deploy(args).await),
        Command::Put(args) => client(app::put(args).await),
        Command::Get(args) => client(app::get(args).await),
        Command::Ls(args) => client(app::ls(args).await),
        Command::Rm(args) => client(app::rm(args).await),
        Command::Status(args) => client(app::status(args).await),
        Command::Worker(WorkerCommand::Deploy(args)) => client(app::deploy_worker(args).await),
        Command::Keys(KeysCommand::Generate(args)) => client(app::keys_generate(args).await),
        Command::Keys(KeysCommand::Add(args)) => client(app::keys_add(args).await),
        Command::Keys(KeysCommand::Promote(args)) => client(app::keys_change(args, "promote").await),
        Command::Keys(KeysCommand::Revoke(args)) => client(app::keys_change(args, "revoke").await),
        Command::Keys(KeysCommand::Ls(args)) => client(app::keys_ls(args).await),
        Command::Token(TokenCommand::Issue(args)) => client(app::token_issue(args).await),
        Command::Url(UrlCommand::Sign(args)) => client(app::url_sign(args).await),
    }
}
