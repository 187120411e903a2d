//! The `kproxy` binary: parse flags, set up logging, hand over to [`kproxy::app`].

use anyhow::Result;
use kproxy::{
    app,
    cli::{self, Command, Explicit, LogFormat, RunArgs},
    dump,
};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let (cli, explicit) = cli::parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let level = match cli.verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    // kube-client logs an ERROR per failed request and a warning per cut watch; the kube
    // source already logs an outage once when it starts and once when it ends.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},kube_client=off,kube_runtime=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli.command {
        Some(Command::Version) => {
            println!("kproxy {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some(Command::Cleanup(args)) => app::cleanup(&args),
        Some(Command::Dump(args)) => dump::run(&args),
        Some(Command::Run(args)) => run(*args, &explicit),
        // kube-proxy's invocation: flags without a subcommand.
        None => run(cli.run, &explicit),
    }
}

fn run(args: RunArgs, explicit: &Explicit) -> Result<()> {
    let args = app::resolve(args, explicit)?;
    if args.cleanup {
        return app::cleanup(&args.cleanup_args());
    }
    tokio::runtime::Runtime::new()?.block_on(app::run(args))
}
