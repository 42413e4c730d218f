use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use turserver::config::{Cli, Command, WorkerCommand};

/// Applied when RUST_LOG is unset. libSQL's replication client warns about
/// every slow frame fetch; the sync loop reports real failures itself.
const DEFAULT_LOG: &str = "info,libsql=warn,libsql::replication=error,libsql_replication=error,\
h2=warn,tonic=warn,hyper=warn,wasmtime=warn,cranelift=warn";

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => turserver::server::run(args).await,
        Command::Worker(WorkerCommand::Deploy(args)) => turserver::client::deploy(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
