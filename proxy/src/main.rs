//! The `kproxy` binary: parse flags, set up logging, hand over to [`kproxy::app`].

use anyhow::Result;
use clap::Parser as _;
use kproxy::{
    app,
    cli::{Cli, Command, LogFormat},
};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = match cli.verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli.command {
        Command::Version => {
            println!("kproxy {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Cleanup(args) => app::cleanup(&args),
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(app::run(*args)),
    }
}
