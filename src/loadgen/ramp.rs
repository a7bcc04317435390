//! `--ramp FROM..TO/s`: open-loop steps at rising rates, to find the knee, the highest
//! rate the target answers within the limits (`--max-p99`, `--max-errors`).
//!
//! Each step sends at its rate for `--step-duration` (latency from the due time, as
//! `--rate`), waits for its last answers, and is judged on its own: the p99 of its ok
//! answers and the share of its requests that were not ok. The ramp stops at the first
//! step over a limit; the knee is the step before it.

use std::fmt::Write as _;
use std::time::Duration;

use super::report::micros;

/// `FROM..TO` requests per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub from: f64,
    pub to: f64,
}

/// Parses `100..2000/s` (or `100..2000`).
pub fn parse_range(text: &str) -> Result<Range, String> {
    let bad = || format!("`{text}` is not a ramp; write FROM..TO/s, e.g. 100..2000/s");
    let (from, to) = text
        .trim()
        .trim_end_matches("/s")
        .split_once("..")
        .ok_or_else(bad)?;
    let number = |n: &str| n.trim().trim_end_matches("/s").parse::<f64>().ok();
    match (number(from), number(to)) {
        (Some(from), Some(to)) if from > 0.0 && to >= from && to <= 10_000_000.0 => {
            Ok(Range { from, to })
        }
        _ => Err(bad()),
    }
}

/// Parses a share of requests: `1%`, `0.5%` (or a bare number of percent).
pub fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches('%').trim().parse::<f64>() {
        Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(percent / 100.0),
        _ => Err(format!("`{text}` is not a percentage, e.g. 1%")),
    }
}

/// The rates of the steps: `from`, `from + step`, ... up to `to`, and `to` itself as
/// the last step when the steps do not land on it.
pub fn rates(range: Range, step: f64) -> Vec<f64> {
    let step = if step > 0.0 { step } else { range.from };
    let mut rates = Vec::new();
    // Whole multiples, so that 0.1 steps do not drift.
    for k in 0u32.. {
        let rate = range.from + f64::from(k) * step;
        if rate > range.to * (1.0 + 1e-9) || rates.len() >= 1000 {
            break;
        }
        rates.push(rate);
    }
    if rates
        .last()
        .is_some_and(|&last| (range.to - last) > range.to * 1e-9)
        && rates.len() < 1000
    {
        rates.push(range.to);
    }
    rates
}

/// What the ramp must stay within.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub max_p99: Option<Duration>,
    /// A share, 0.01 for 1%.
    pub max_errors: Option<f64>,
}

impl Limits {
    /// Why `step` is over a limit, or `None` when it is within them.
    pub fn crossed(&self, step: &Step) -> Option<String> {
        if let Some(max) = self.max_errors
            && step.error_share() > max
        {
            return Some(format!(
                "errors {:.1}% > {}%",
                step.error_share() * 100.0,
                max * 100.0
            ));
        }
        if let Some(max) = self.max_p99 {
            let max_micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
            match step.p99 {
                None => return Some("no ok answers".into()),
                Some(p99) if p99 > max_micros => {
                    return Some(format!("p99 {} > {}", micros(p99), micros(max_micros)));
                }
                Some(_) => {}
            }
        }
        None
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(max) = self.max_p99 {
            parts.push(format!(
                "p99 ≤ {}",
                micros(u64::try_from(max.as_micros()).unwrap_or(u64::MAX))
            ));
        }
        if let Some(max) = self.max_errors {
            parts.push(format!("errors ≤ {}%", max * 100.0));
        }
        if parts.is_empty() {
            "none given".into()
        } else {
            parts.join(", ")
        }
    }
}

/// What one step of the ramp measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Requests per second asked for.
    pub asked: f64,
    /// Ok answers per second of the step.
    pub achieved: f64,
    /// Every request due in the step (answered, failed or not sent).
    pub requests: u64,
    /// Requests that did not end with an ok answer.
    pub errors: u64,
    /// Percentiles of the ok answers' latency, µs; `None` without ok answers.
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
}

impl Step {
    pub fn error_share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The knee: the last step within the limits before the first one over them; `None`
/// when the first step is already over.
pub fn knee(steps: &[Step], limits: &Limits) -> Option<usize> {
    let first_over = steps
        .iter()
        .position(|step| limits.crossed(step).is_some())
        .unwrap_or(steps.len());
    first_over.checked_sub(1)
}

/// Whether the ramp goes on after `steps`: not once a step is over a limit.
pub fn goes_on(steps: &[Step], limits: &Limits) -> bool {
    steps
        .last()
        .is_none_or(|step| limits.crossed(step).is_none())
}

/// The report section: a row per step run, and the knee.
pub fn markdown(steps: &[Step], limits: &Limits, planned: usize, step_length: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Ramp\n\n{} of {planned} steps of {step_length:?} each, open loop; limits: {}.\n\n\
         | step | rate asked | rate achieved | p50 | p99 | p99.9 | errors | within limits |\n\
         |---|---|---|---|---|---|---|---|",
        steps.len(),
        limits.describe()
    );
    let or_dash = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), micros);
    for (at, step) in steps.iter().enumerate() {
        let verdict = match limits.crossed(step) {
            None => "yes".to_owned(),
            Some(why) => format!("no: {why}"),
        };
        let _ = writeln!(
            out,
            "| {} | {}/s | {:.1}/s | {} | {} | {} | {:.2}% ({}) | {verdict} |",
            at + 1,
            step.asked,
            step.achieved,
            or_dash(step.p50),
            or_dash(step.p99),
            or_dash(step.p999),
            step.error_share() * 100.0,
            step.errors,
        );
    }
    let _ = writeln!(out);
    match knee(steps, limits) {
        Some(at) if at + 1 == steps.len() && steps.len() == planned => {
            let _ = writeln!(
                out,
                "**Knee: none found**: every step was within the limits; the knee is above {}/s.",
                steps[at].asked
            );
        }
        Some(at) => {
            let _ = writeln!(
                out,
                "**Knee: {}/s** (step {}, the last within the limits).",
                steps[at].asked,
                at + 1
            );
        }
        None => {
            let _ = writeln!(
                out,
                "**Knee: below {}/s**: the first step was already over a limit.",
                steps.first().map_or(0.0, |s| s.asked)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(asked: f64, p99_ms: u64, errors: u64) -> Step {
        Step {
            asked,
            achieved: asked,
            requests: 100,
            errors,
            p50: Some(p99_ms * 500),
            p99: Some(p99_ms * 1000),
            p999: Some(p99_ms * 1100),
        }
    }

    #[test]
    fn ramps_and_limits_parse() {
        assert_eq!(
            parse_range("100..2000/s"),
            Ok(Range {
                from: 100.0,
                to: 2000.0
            })
        );
        assert_eq!(parse_range("5..5").map(|r| r.to), Ok(5.0));
        for bad in ["", "100", "0..10/s", "20..10/s", "a..b"] {
            assert!(parse_range(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_percent("1%"), Ok(0.01));
        assert_eq!(parse_percent("0.5%"), Ok(0.005));
        assert!(parse_percent("101%").is_err());
    }

    #[test]
    fn the_steps_rise_from_the_first_rate_to_the_last() {
        let range = |from, to| Range { from, to };
        assert_eq!(
            rates(range(100.0, 500.0), 100.0),
            [100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(rates(range(100.0, 450.0), 100.0).last(), Some(&450.0));
        assert_eq!(rates(range(100.0, 100.0), 50.0), [100.0]);
        assert_eq!(rates(range(0.1, 0.3), 0.1).len(), 3, "no drift");
        assert_eq!(rates(range(10.0, 40.0), 0.0), [10.0, 20.0, 30.0, 40.0]);
        assert_eq!(
            rates(range(1.0, 1e6), 1.0).len(),
            1000,
            "at most 1000 steps"
        );
    }

    #[test]
    fn the_knee_is_the_last_step_before_the_first_over_a_limit() {
        let limits = Limits {
            max_p99: Some(Duration::from_millis(250)),
            max_errors: Some(0.01),
        };
        let steps = [step(100.0, 10, 0), step(200.0, 90, 1), step(300.0, 300, 0)];
        assert_eq!(limits.crossed(&steps[1]), None, "1% is within 1%");
        assert_eq!(
            limits.crossed(&steps[2]).as_deref(),
            Some("p99 300.00 ms > 250.00 ms")
        );
        assert_eq!(knee(&steps, &limits), Some(1));
        assert!(!goes_on(&steps, &limits));
        assert!(goes_on(&steps[..2], &limits));
        assert!(goes_on(&[], &limits));
        let errors = step(400.0, 1, 2);
        assert_eq!(limits.crossed(&errors).as_deref(), Some("errors 2.0% > 1%"));
        assert_eq!(knee(std::slice::from_ref(&errors), &limits), None);
        let no_answers = Step {
            p50: None,
            p99: None,
            p999: None,
            ..step(500.0, 1, 0)
        };
        assert_eq!(
            limits.crossed(&no_answers).as_deref(),
            Some("no ok answers")
        );
        assert_eq!(knee(&steps, &Limits::default()), Some(2), "no limits");

        let section = markdown(&steps, &limits, 5, Duration::from_secs(5));
        assert!(section.contains("3 of 5 steps of 5s each"), "{section}");
        assert!(
            section.contains(
                "| 2 | 200/s | 200.0/s | 45.00 ms | 90.00 ms | 99.00 ms | 1.00% (1) | yes |"
            ),
            "{section}"
        );
        assert!(
            section.contains("| no: p99 300.00 ms > 250.00 ms |"),
            "{section}"
        );
        assert!(
            section.contains("**Knee: 200/s** (step 2, the last within the limits)."),
            "{section}"
        );
        let all_within = markdown(&steps[..2], &limits, 2, Duration::from_secs(5));
        assert!(all_within.contains("**Knee: none found**"), "{all_within}");
        let first_over = markdown(&[errors], &limits, 5, Duration::from_secs(5));
        assert!(first_over.contains("**Knee: below 400/s**"), "{first_over}");
    }
}
