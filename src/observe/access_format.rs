//! The access line, formatted straight into the line buffer.
//!
//! Every request writes one access line ([`super::access`]), so its formatting is on
//! every request's path. The general formatter of `tracing-subscriber` goes through
//! its field visitor and `core::fmt` for every field and the timestamp; this one
//! writes the same bytes directly. Its output is the general formatter's, byte for
//! byte apart from the time (checked by this module's tests), in text (without
//! colours) and JSON. Every other line, and access lines for a terminal, go through
//! the general formatter.

use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of access lines.
pub const ACCESS_TARGET: &str = "ssogate::access";

/// Formats access lines itself and hands every other event to `inner`.
pub struct AccessLines<F> {
    pub inner: F,
    pub json: bool,
}

impl<S, N, F> FormatEvent<S, N> for AccessLines<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        if metadata.target() != ACCESS_TARGET || writer.has_ansi_escapes() {
            return self.inner.format_event(ctx, writer, event);
        }
        let level = metadata.level().as_str();
        if self.json {
            writer.write_str("{\"timestamp\":\"")?;
            write_time(&mut writer, SystemTime::now())?;
            writer.write_str("\",\"level\":\"")?;
            writer.write_str(level)?;
            writer.write_char('"')?;
            let mut fields = JsonFields {
                writer: &mut writer,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            writer.write_str(",\"target\":\"")?;
            write_json_text(&mut writer, ACCESS_TARGET)?;
            writer.write_str("\"}\n")
        } else {
            write_time(&mut writer, SystemTime::now())?;
            // A space, then the level right-aligned in five, as the general formatter.
            writer.write_str(&"      "[..6 - level.len().min(5)])?;
            writer.write_str(level)?;
            writer.write_char(' ')?;
            let mut fields = TextFields {
                writer: &mut writer,
                first: true,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            writer.write_char('\n')
        }
    }
}

/// `2026-12-01T03:28:31.173933Z`: UTC, microseconds, as the general formatter.
fn write_time(writer: &mut impl Write, time: SystemTime) -> fmt::Result {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut text[0..4], year as u64);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], of_day / 3600);
    put_digits(&mut text[14..16], of_day / 60 % 60);
    put_digits(&mut text[17..19], of_day % 60);
    put_digits(&mut text[20..26], u64::from(since.subsec_micros()));
    writer.write_str(std::str::from_utf8(&text).expect("ASCII digits"))
}

/// Writes `value`'s last `digits.len()` decimal digits into `digits`.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Year, month and day of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Text fields as the general formatter writes them: the message bare, then
/// ` name=value`, strings quoted and escaped as Rust's `Debug` does.
struct TextFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl TextFields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        if field.name() != "message" {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        Ok(())
    }
}

impl Visit for TextFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = self.name(field).and_then(|()| {
            if field.name() == "message" {
                self.writer.write_str(value)
            } else if value
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                // Nothing `Debug` would escape.
                self.writer.write_char('"')?;
                self.writer.write_str(value)?;
                self.writer.write_char('"')
            } else {
                write!(self.writer, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| write_u64(self.writer, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .name(field)
            .and_then(|()| write!(self.writer, "{value:?}"));
    }
}

/// Flattened JSON fields: `,"name":value`, strings escaped as serde_json does.
struct JsonFields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        self.writer.write_str(",\"")?;
        write_json_text(self.writer, field.name())?;
        self.writer.write_str("\":")
    }

    fn string(&mut self, field: &Field, value: &str) -> fmt::Result {
        self.name(field)?;
        self.writer.write_char('"')?;
        write_json_text(self.writer, value)?;
        self.writer.write_char('"')
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.string(field, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| write_u64(self.writer, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            // Written to a string first, as the general formatter does: it is escaped
            // as a whole.
            let text = format!("{value:?}");
            self.result = self.string(field, &text);
        }
    }
}

fn write_u64(writer: &mut impl Write, value: u64) -> fmt::Result {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    writer.write_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"))
}

/// `text` inside a JSON string: `"`, `\` and the C0 controls escaped, as serde_json
/// writes them (`\n`, `\u001b`, ...).
fn write_json_text(writer: &mut impl Write, text: &str) -> fmt::Result {
    let mut plain = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        writer.write_str(&text[plain..at])?;
        if escape.is_empty() {
            write!(writer, "\\u{byte:04x}")?;
        } else {
            writer.write_str(escape)?;
        }
        plain = at + 1;
    }
    writer.write_str(&text[plain..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::logging::tests::Buffer;
    use crate::observe::logging::{LogFormat, subscriber_with};

    /// Access lines with awkward values, through the subscriber with or without
    /// this formatter; the time cut off each line (checked apart).
    fn access_lines(format: LogFormat, fast: bool) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = subscriber_with(format, false, buffer.clone(), fast);
        let paths = [
            "/organizations/acme/issues/",
            "/a\"b\\c/\u{1b}[31m/\u{7f}/caf\u{e9}/\u{85}/\u{202e}/\t/\r\n",
            "",
        ];
        tracing::subscriber::with_default(subscriber, || {
            for (n, path) in paths.iter().enumerate() {
                let method = http::Method::GET;
                let user = ["-", "sub \"quoted\" \\ caf\u{e9}", "\u{1}"][n];
                tracing::info!(
                    target: "ssogate::access",
                    method = %method,
                    path = %path,
                    route = "protected",
                    status = 200u16,
                    duration_us = 858u64 * n as u64,
                    bytes = u64::MAX,
                    user,
                    request_id = "f55e06e693466a86bec2e8b08b3d6dc3",
                    completed = n != 1,
                    "request"
                );
            }
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        out.lines()
            .map(|line| {
                let (time, rest) = match format {
                    LogFormat::Text => line.split_at(27),
                    LogFormat::Json => {
                        let (head, rest) = line.split_at(14);
                        let (time, tail) = rest.split_at(27);
                        assert_eq!(head, "{\"timestamp\":\"", "{line}");
                        return check_time(time, &format!("{head}{tail}"));
                    }
                };
                check_time(time, rest)
            })
            .collect()
    }

    fn check_time(time: &str, rest: &str) -> String {
        let shape = time
            .bytes()
            .map(|b| if b.is_ascii_digit() { b'0' } else { b })
            .collect::<Vec<_>>();
        assert_eq!(shape, b"0000-00-00T00:00:00.000000Z", "{time}");
        rest.to_owned()
    }

    #[test]
    fn access_lines_are_the_general_formatters_byte_for_byte() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let general = access_lines(format, false);
            let fast = access_lines(format, true);
            assert_eq!(general.len(), 3, "{general:?}");
            assert_eq!(fast, general, "{format:?}");
        }
    }

    #[test]
    fn the_time_is_utc_with_microseconds() {
        let mut text = String::new();
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_764_559_711_173_933);
        write_time(&mut text, at).unwrap();
        assert_eq!(text, "2025-12-01T03:28:31.173933Z");
        text.clear();
        write_time(&mut text, UNIX_EPOCH).unwrap();
        assert_eq!(text, "1970-01-01T00:00:00.000000Z");
        // A leap day, and the last microsecond of a year.
        for (micros, expected) in [
            (951_782_400_000_000u64, "2000-02-29T00:00:00.000000Z"),
            (4_102_444_799_999_999, "2099-12-31T23:59:59.999999Z"),
        ] {
            text.clear();
            write_time(
                &mut text,
                UNIX_EPOCH + std::time::Duration::from_micros(micros),
            )
            .unwrap();
            assert_eq!(text, expected);
        }
    }
}
