//! The `ssogate` command line: parse, load the config, run.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssogate::observe::logging::{self, LogFormat};

/// The request path allocates many small, short-lived buffers on each serving thread;
/// mimalloc's thread-local pages serve them faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Log lines as readable text, or one JSON object per line.
        #[arg(long, env = "SSOGATE_LOG_FORMAT", value_enum, default_value_t)]
        log_format: LogFormat,
    },
    /// Run a local demo on loopback: a development identity provider, a demo upstream
    /// and the gateway with a self-signed certificate.
    Demo {
        /// Port of the gateway on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8443)]
        port: u16,
        #[arg(long, env = "SSOGATE_LOG_FORMAT", value_enum, default_value_t)]
        log_format: LogFormat,
    },
    /// Validate the config and reach the provider and the upstream.
    Check {
        #[arg(long, env = "SSOGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a fresh random session secret.
    GenSecret,
    /// Load-test a deployment (the gateway, or Sentry directly) with Sentry-shaped
    /// traffic; loopback only unless --allow-host names the target's host.
    Bench(Box<ssogate::loadgen::BenchArgs>),
}

/// Single-threaded: this thread is serving thread 0, and `server.threads` adds the
/// others, each with its own runtime (see `server`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let code = run(Cli::parse()).await;
    // Lines still on their way to standard output.
    logging::flush();
    code
}

async fn run(cli: Cli) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::GenSecret => {
            println!("{}", ssogate::session::new_secret());
            ExitCode::SUCCESS
        }
        Command::Bench(args) => match ssogate::loadgen::run(*args).await {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ssogate bench: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check { config } => {
            if ssogate::check::run(config.as_deref()).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run { config, log_format } => {
            logging::init(log_format);
            let settings = match ssogate::config::Settings::load(config.as_deref()) {
                Ok(settings) => settings,
                Err(e) => {
                    for problem in e.problems() {
                        eprintln!("ssogate: config error: {problem}");
                    }
                    return ExitCode::from(2);
                }
            };
            match ssogate::server::start(settings, ssogate::server::shutdown_signal()).await {
                Ok(running) => {
                    running.reload_on_sighup(config);
                    running.stopped().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ssogate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { port, log_format } => {
            logging::init(log_format);
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
