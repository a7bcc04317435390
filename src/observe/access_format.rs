//! The access line, written straight into the log output.
//!
//! Every request writes one access line ([`super::access`]), so writing it is on every
//! request's path. Sent as a `tracing` event, it would pass the subscriber's dispatch,
//! its filter, the general formatter's field visitors and `core::fmt` for every field
//! and the timestamp. When the process logs to a file, a pipe or journald (not a
//! terminal) and `SSOGATE_LOG` lets access lines through, [`AccessLine::write`] puts
//! the same bytes into the log output's buffer itself ([`super::logging`] decides once,
//! at start). Its output is the general formatter's, byte for byte apart from the time
//! (checked by this module's tests), in text and JSON. For a terminal (colours) and in
//! tests without that output, [`AccessLine::emit`] sends the event through `tracing`.

use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use super::logging::LogFormat;

/// The target of access lines.
pub const ACCESS_TARGET: &str = "ssogate::access";

/// One request's access line: what [`super::access::AccessRecord`] gathered.
pub struct AccessLine<'a> {
    pub method: &'a str,
    /// The path only: never the query, which may carry a login `code`.
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration_us: u64,
    pub bytes: u64,
    /// The person's `sub`, or `-`.
    pub user: &'a str,
    pub request_id: &'a str,
    /// Whether the whole body was sent.
    pub completed: bool,
}

impl AccessLine<'_> {
    /// Sends the line as a `tracing` event (the general formatter writes it).
    pub fn emit(&self) {
        tracing::info!(
            target: "ssogate::access",
            method = %self.method,
            path = %self.path,
            route = self.route,
            status = self.status,
            duration_us = self.duration_us,
            bytes = self.bytes,
            user = self.user,
            request_id = self.request_id,
            completed = self.completed,
            "request"
        );
    }

    /// Appends the line, with its end, as the general formatter would write [`emit`]'s
    /// event at `now` (before the log output's escaping, which applies to both).
    ///
    /// [`emit`]: Self::emit
    pub fn write(&self, out: &mut String, format: LogFormat, now: SystemTime) -> fmt::Result {
        match format {
            LogFormat::Json => {
                out.write_str("{\"timestamp\":\"")?;
                write_time(out, now)?;
                out.write_str("\",\"level\":\"INFO\",\"message\":\"request\",\"method\":\"")?;
                write_json_text(out, self.method)?;
                out.write_str("\",\"path\":\"")?;
                write_json_text(out, self.path)?;
                out.write_str("\",\"route\":\"")?;
                write_json_text(out, self.route)?;
                out.write_str("\",\"status\":")?;
                write_u64(out, self.status.into())?;
                out.write_str(",\"duration_us\":")?;
                write_u64(out, self.duration_us)?;
                out.write_str(",\"bytes\":")?;
                write_u64(out, self.bytes)?;
                out.write_str(",\"user\":\"")?;
                write_json_text(out, self.user)?;
                out.write_str("\",\"request_id\":\"")?;
                write_json_text(out, self.request_id)?;
                out.write_str("\",\"completed\":")?;
                out.write_str(if self.completed { "true" } else { "false" })?;
                out.write_str(",\"target\":\"")?;
                write_json_text(out, ACCESS_TARGET)?;
                out.write_str("\"}\n")
            }
            LogFormat::Text => {
                // The level right-aligned in five after a space, the message bare, then
                // `name=value`: Display values as they are, strings quoted as `Debug`.
                write_time(out, now)?;
                out.write_str("  INFO request method=")?;
                out.write_str(self.method)?;
                out.write_str(" path=")?;
                out.write_str(self.path)?;
                out.write_str(" route=")?;
                write_debug_text(out, self.route)?;
                out.write_str(" status=")?;
                write_u64(out, self.status.into())?;
                out.write_str(" duration_us=")?;
                write_u64(out, self.duration_us)?;
                out.write_str(" bytes=")?;
                write_u64(out, self.bytes)?;
                out.write_str(" user=")?;
                write_debug_text(out, self.user)?;
                out.write_str(" request_id=")?;
                write_debug_text(out, self.request_id)?;
                out.write_str(" completed=")?;
                out.write_str(if self.completed { "true" } else { "false" })?;
                out.write_char('\n')
            }
        }
    }
}

/// `2026-12-01T03:28:31.173933Z`: UTC, microseconds, as the general formatter. The
/// date and time of day are worked out once per second on each thread (lines come
/// many to a second), only the microseconds every time.
fn write_time(writer: &mut impl Write, time: SystemTime) -> fmt::Result {
    thread_local! {
        /// The last second written, and its text up to the `.`.
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let (cached, date_time) = SECOND.get();
    if cached == seconds {
        text[..19].copy_from_slice(&date_time);
    } else {
        let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
        let of_day = seconds % 86_400;
        put_digits(&mut text[0..4], year as u64);
        put_digits(&mut text[5..7], month);
        put_digits(&mut text[8..10], day);
        put_digits(&mut text[11..13], of_day / 3600);
        put_digits(&mut text[14..16], of_day / 60 % 60);
        put_digits(&mut text[17..19], of_day % 60);
        SECOND.set((seconds, text[..19].try_into().expect("19 bytes")));
    }
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

/// A string as Rust's `Debug` quotes it (the general formatter's text fields).
fn write_debug_text(writer: &mut impl Write, value: &str) -> fmt::Result {
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        // Nothing `Debug` would escape.
        writer.write_char('"')?;
        writer.write_str(value)?;
        writer.write_char('"')
    } else {
        write!(writer, "{value:?}")
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
    use crate::observe::logging::{LineStyle, escape_line, subscriber};

    /// Access lines with awkward values, through the general formatter (`direct`
    /// false) or written directly and escaped as the log output escapes them; the
    /// time cut off each line (checked apart).
    fn access_lines(format: LogFormat, direct: bool) -> Vec<String> {
        let paths = [
            "/organizations/acme/issues/",
            "/a\"b\\c/\u{1b}[31m/\u{7f}/caf\u{e9}/\u{85}/\u{202e}/\t/\r\n",
            "",
        ];
        let lines = paths.iter().enumerate().map(|(n, path)| AccessLine {
            method: ["GET", "M-SEARCH", "PO\"ST"][n],
            path,
            route: ["protected", "public", "gate\u{85}way"][n],
            status: 200,
            duration_us: 858 * n as u64,
            bytes: u64::MAX,
            user: ["-", "sub \"quoted\" \\ caf\u{e9}", "\u{1}"][n],
            request_id: "f55e06e693466a86bec2e8b08b3d6dc3",
            completed: n != 1,
        });
        let out = if direct {
            let style = match format {
                LogFormat::Text => LineStyle::Text,
                LogFormat::Json => LineStyle::Json,
            };
            let mut out = String::new();
            for line in lines {
                let mut text = String::new();
                line.write(&mut text, format, SystemTime::now()).unwrap();
                out.push_str(&escape_line(&text, style));
            }
            out
        } else {
            let buffer = Buffer::default();
            tracing::subscriber::with_default(subscriber(format, false, buffer.clone()), || {
                lines.for_each(|line| line.emit())
            });
            String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
        };
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
            let direct = access_lines(format, true);
            assert_eq!(general.len(), 3, "{general:?}");
            assert_eq!(direct, general, "{format:?}");
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
        // A leap day, the last microsecond of a year, and times a second (and a
        // microsecond) apart after one another: the remembered second is not reused.
        for (micros, expected) in [
            (951_782_400_000_000u64, "2000-02-29T00:00:00.000000Z"),
            (951_782_400_000_001u64, "2000-02-29T00:00:00.000001Z"),
            (951_782_401_000_001u64, "2000-02-29T00:00:01.000001Z"),
            (951_782_400_999_999u64, "2000-02-29T00:00:00.999999Z"),
            (4_102_444_799_999_999, "2099-12-31T23:59:59.999999Z"),
            (4_102_444_800_000_000, "2100-01-01T00:00:00.000000Z"),
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
