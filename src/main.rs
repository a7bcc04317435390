//! The `ssogate` command line: parse, load the config, run.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ssogate",
    version,
    about = "Single sign-on (OpenID Connect) gateway for self-hosted Sentry and other web apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file (TOML); every key can also come from SSOGATE_<SECTION>_<KEY>.
        #[arg(long, env = "SSOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a local demo on loopback: a development identity provider, a demo upstream
    /// and the gateway with a self-signed certificate.
    Demo {
        /// Port of the gateway on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
    /// Validate the config and reach the provider and the upstream.
    Check {
        #[arg(long, env = "SSOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a fresh random session secret.
    GenSecret,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SSOGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in files or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

/// Single-threaded: this thread is serving thread 0, and `server.threads` adds the
/// others, each with its own runtime (see `server`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::GenSecret => {
            println!("{}", ssogate::session::new_secret());
            ExitCode::SUCCESS
        }
        Command::Check { config } => {
            if ssogate::check::run(config.as_deref()).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run { config } => {
            init_logging();
            let settings = match ssogate::config::Settings::load(config.as_deref()) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("ssogate: config error: {e}");
                    return ExitCode::from(2);
                }
            };
            match ssogate::server::start(settings, ssogate::server::shutdown_signal()).await {
                Ok(running) => {
                    running.stopped().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ssogate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { port } => {
            init_logging();
            match ssogate::demo::run(port).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ssogate demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
