//! Log output: human-readable lines by default, one JSON object per line with
//! `--log-format json` (for a log collector). `SSOGATE_LOG` filters, as
//! `RUST_LOG` does elsewhere (`info` by default; `ssogate::access=off` silences the
//! access lines).
//!
//! Lines carry what clients sent (paths, hosts, parameters), so every line is escaped
//! on its way out ([`EscapingWriter`]): characters that let a log viewer show forged
//! lines or hidden text never appear raw. They are the C1 controls (U+0080 to U+009F;
//! U+0085 is a line break to some viewers, U+009B starts a terminal control
//! sequence), the line and paragraph separators (U+2028, U+2029) and the
//! bidirectional controls (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to
//! U+2069), which reorder what a viewer shows. In text lines they become `\u{85}`;
//! without colours (files, journald) so do the C0 controls other than the tab and
//! the line's own end. In JSON they become `\u0085`, which a JSON reader decodes to
//! the same string: the collector keeps the exact value, the file shows no raw control.
//!
//! Lines reach standard output in batches from a writer thread of their own
//! ([`super::log_output`]): logging never makes a serving thread wait or make a system
//! call. Access lines skip `tracing` on their way there when they can
//! ([`write_access_line`]). Call [`flush`] before the process exits.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use tracing_subscriber::fmt::MakeWriter;

use super::access_format::{ACCESS_TARGET, AccessLine};
use super::log_output::{Batched, LineBatcher};

/// The output [`init`] installed.
static OUTPUT: OnceLock<Arc<LineBatcher>> = OnceLock::new();

/// Where access lines go without passing through `tracing`: set by [`init`] when
/// lines are not for a terminal and the filter lets access lines through.
static ACCESS_OUTPUT: OnceLock<(Arc<LineBatcher>, LogFormat)> = OnceLock::new();

/// The shape of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines: time, level, message, fields.
    #[default]
    Text,
    /// One JSON object per line, the fields at the top level.
    Json,
}

/// Installs the global subscriber, writing to standard output in batches.
pub fn init(format: LogFormat) {
    // Colours only for a person at a terminal, not in files or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    init_to(format, ansi, Box::new(std::io::stdout()));
}

/// [`init`], writing to `output` (the allocation bench writes to nowhere).
pub fn init_to(format: LogFormat, ansi: bool, output: Box<dyn Write + Send>) {
    let output = OUTPUT.get_or_init(|| LineBatcher::start(output));
    // Also takes the `log` records of the libraries (rustls), as `fmt().init()` does.
    tracing_subscriber::util::SubscriberInitExt::init(subscriber(
        format,
        ansi,
        Batched(output.clone()),
    ));
    // Decided once: `SSOGATE_LOG` is read at start only.
    if !ansi && tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        let _ = ACCESS_OUTPUT.set((output.clone(), format));
    }
}

/// Writes one access line: straight into the log output when [`init`] allowed it,
/// else as a `tracing` event (a terminal's colours, the tests' subscribers, or
/// nowhere when the filter turned access lines off).
pub fn write_access_line(line: &AccessLine<'_>) {
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    }
    let Some((output, format)) = ACCESS_OUTPUT.get() else {
        return line.emit();
    };
    let style = match format {
        LogFormat::Text => LineStyle::Text,
        LogFormat::Json => LineStyle::Json,
    };
    LINE.with_borrow_mut(|text| {
        text.clear();
        // Writing to a `String` cannot fail.
        let _ = line.write(text, *format, SystemTime::now());
        output.append(escape_line(text, style).as_bytes());
    });
}

/// Writes every log line still pending (before the process exits).
pub fn flush() {
    if let Some(output) = OUTPUT.get() {
        output.flush();
    }
}

/// Log lines dropped because the output did not keep up
/// (`ssogate_log_lines_dropped_total`).
pub fn lines_dropped() -> u64 {
    OUTPUT.get().map_or(0, |output| output.lines_dropped())
}

/// The subscriber [`init`] installs, writing through an [`EscapingWriter`] to `out`.
/// (Public for the tests, which write to a buffer.)
pub fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    out: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("SSOGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let general = tracing_subscriber::fmt::format();
    match format {
        LogFormat::Text => {
            let escaping = Escaping {
                inner: out,
                style: if ansi {
                    LineStyle::TextWithColours
                } else {
                    LineStyle::Text
                },
            };
            let general = general.with_target(false);
            Box::new(builder.with_writer(escaping).event_format(general).finish())
        }
        // The target (`ssogate::access` for access lines) lets a collector route them.
        LogFormat::Json => {
            let general = general
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false);
            Box::new(
                builder
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_writer(Escaping {
                        inner: out,
                        style: LineStyle::Json,
                    })
                    .event_format(general)
                    .finish(),
            )
        }
    }
}

/// How a log line is written, hence how it is escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineStyle {
    /// Text for a file or a collector: C0 controls are escaped too.
    Text,
    /// Text for a terminal: the formatter's own colour sequences stay.
    TextWithColours,
    /// JSON: the serializer escapes C0 controls itself.
    Json,
}

/// A [`MakeWriter`] whose writers escape each line ([`escape_line`]).
pub struct Escaping<W> {
    inner: W,
    style: LineStyle,
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for Escaping<W> {
    type Writer = EscapingWriter<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer(),
            style: self.style,
        }
    }
}

/// Writes what it is given through [`escape_line`]. The formatter hands it one whole
/// line per write.
pub struct EscapingWriter<W> {
    inner: W,
    style: LineStyle,
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(line) => self
                .inner
                .write_all(escape_line(line, self.style).as_bytes())?,
            // The formatter writes strings; a cut-off one is written as it is.
            Err(_) => self.inner.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `line` with the characters the module docs name escaped; borrowed when it has
/// none (the usual case: one scan of the bytes).
pub fn escape_line(line: &str, style: LineStyle) -> Cow<'_, str> {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let escape_c0 = style == LineStyle::Text;
    // Lead bytes of U+0080..U+009F (C2), U+061C (D8), U+2028.. (E2); C0 and DEL.
    // Folded over every byte without stopping early, so that the compiler checks
    // many bytes at once: nearly every line has none of them.
    let suspect = body.bytes().fold(false, |found, b| {
        let c0 = escape_c0 & ((b < 0x20) & (b != b'\t') | (b == 0x7f));
        found | c0 | (b == 0xC2) | (b == 0xD8) | (b == 0xE2)
    });
    let needs_escape = |c: char| {
        let c0 = escape_c0 && (c < '\u{20}' && c != '\t' || c == '\u{7f}');
        c0 || misleads_viewers(c)
    };
    if !suspect || !body.chars().any(needs_escape) {
        return Cow::Borrowed(line);
    }
    let mut escaped = String::with_capacity(line.len() + 16);
    for c in body.chars() {
        let code = u32::from(c);
        if needs_escape(c) {
            match style {
                LineStyle::Json => escaped.push_str(&format!("\\u{code:04x}")),
                LineStyle::Text | LineStyle::TextWithColours => {
                    escaped.push_str(&format!("\\u{{{code:x}}}"))
                }
            }
        } else {
            escaped.push(c);
        }
    }
    if body.len() < line.len() {
        escaped.push('\n');
    }
    Cow::Owned(escaped)
}

/// C1 controls, the line and paragraph separators, and the bidirectional controls.
fn misleads_viewers(c: char) -> bool {
    matches!(
        c,
        '\u{80}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The characters of the module docs, and where they may come from.
    const HOSTILE: [char; 17] = [
        '\u{80}', '\u{85}', '\u{9b}', '\u{9f}', '\u{2028}', '\u{2029}', '\u{61c}', '\u{200e}',
        '\u{200f}', '\u{202a}', '\u{202c}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}',
        '\u{2069}', '\u{202b}',
    ];

    /// Log output kept in memory (also for the other `observe` tests).
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// Logs one access-like line and one message with `text` in every kind of field
    /// (Display, Debug, str, message), through the real formatter.
    fn log_through(format: LogFormat, ansi: bool, text: &str) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, ansi, buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "ssogate::access", method = "GET", path = %text, host = ?text, user = text, "request");
            tracing::info!("request refused: bad path {text}");
            tracing::warn!(error = %format!("wrapped: {text}"), "cannot build the upstream URI");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn no_line_carries_a_raw_control_or_bidi_character() {
        for hostile in HOSTILE {
            let text = format!("/a{hostile}b/{hostile}{hostile}");
            for (format, ansi) in [
                (LogFormat::Text, false),
                (LogFormat::Text, true),
                (LogFormat::Json, false),
            ] {
                let out = log_through(format, ansi, &text);
                assert_eq!(out.lines().count(), 3, "{format:?}: {out}");
                assert!(
                    !out.contains(hostile),
                    "{format:?} ansi={ansi} U+{:04X}: {out:?}",
                    u32::from(hostile)
                );
                if format == LogFormat::Json {
                    // Still the same string to a JSON reader.
                    for line in out.lines() {
                        let value: serde_json::Value = serde_json::from_str(line).unwrap();
                        if let Some(path) = value.get("path") {
                            assert_eq!(path, &serde_json::Value::String(text.clone()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn text_lines_without_colours_escape_c0_controls_too() {
        let out = log_through(LogFormat::Text, false, "/a\u{1b}[31mred\rx\u{7f}");
        assert!(
            !out.contains('\u{1b}') && !out.contains('\r') && !out.contains('\u{7f}'),
            "{out:?}"
        );
        assert!(out.contains("\\u{1b}"), "{out:?}");
    }

    #[test]
    fn escaping_leaves_ordinary_lines_alone_and_keeps_the_line_end() {
        let plain = "2026-01-01 INFO request path=/caf\u{e9}/\u{2014} status=200\n";
        assert!(matches!(
            escape_line(plain, LineStyle::Text),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_line("a\u{85}b\u{202e}c\n", LineStyle::Text),
            "a\\u{85}b\\u{202e}c\n"
        );
        assert_eq!(
            escape_line("{\"p\":\"a\u{2028}b\"}\n", LineStyle::Json),
            "{\"p\":\"a\\u2028b\"}\n"
        );
        assert_eq!(escape_line("a\tb\u{1}\n", LineStyle::Text), "a\tb\\u{1}\n");
        assert_eq!(
            escape_line("a\u{1b}[1mb\n", LineStyle::TextWithColours),
            "a\u{1b}[1mb\n"
        );
    }
}
