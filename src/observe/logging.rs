//! Log output: human-readable lines by default, one JSON object per line with
//! `--log-format json` (for a log collector). `SSOGATE_LOG` filters, as
//! `RUST_LOG` does elsewhere (`info` by default; `ssogate::access=off` silences the
//! access lines).

/// The shape of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines: time, level, message, fields.
    #[default]
    Text,
    /// One JSON object per line, the fields at the top level.
    Json,
}

/// Installs the global subscriber, writing to standard output.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SSOGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => {
            // Colours only for a person at a terminal, not in files or a log collector.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder.with_target(false).with_ansi(ansi).init();
        }
        // The target (`ssogate::access` for access lines) lets a collector route them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
