//! The report's chart, a small SVG written next to the Markdown report (`--report
//! FILE.md` gives `FILE.svg`): the latency percentiles of each scenario's ok answers
//! as bars, or, for a ramp, the p99 of each step against the rate it was asked for.
//! Every bar and point carries its figure as text, so the chart reads without a scale.

use std::fmt::Write as _;

use super::report::micros;

/// The percentiles the latency chart shows, with their labels.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
const COLOURS: [&str; 4] = ["#4c78a8", "#72b7b2", "#f58518", "#e45756"];

/// `<`, `>`, `&` and quotes as SVG text and attributes need them.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn open_svg(width: f64, height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    )
}

/// Bars of `PERCENTILES` for each scenario: `(scenario, latency in µs at each)`.
pub fn latency(rows: &[(String, [u64; 4])]) -> String {
    let (label_width, bar_width, bar, gap) = (110.0, 420.0, 14.0, 10.0);
    let group = bar * PERCENTILES.len() as f64 + gap;
    let height = 60.0 + group * rows.len().max(1) as f64;
    let longest = rows
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut svg = open_svg(
        label_width + bar_width + 100.0,
        height,
        "Latency of the ok answers (lower is better)",
    );
    for (index, (name, _)) in PERCENTILES.iter().enumerate() {
        let x = label_width + index as f64 * 80.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"30\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"39\">{name}</text>",
            COLOURS[index],
            x + 14.0
        );
    }
    for (row, (scenario, values)) in rows.iter().enumerate() {
        let top = 50.0 + group * row as f64;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_width - 8.0,
            top + group / 2.0,
            escape(scenario)
        );
        for (index, &value) in values.iter().enumerate() {
            let y = top + bar * index as f64;
            let width = bar_width * value as f64 / longest;
            let _ = writeln!(
                svg,
                "<rect x=\"{label_width}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{} {}</text>",
                bar - 2.0,
                COLOURS[index],
                label_width + width + 4.0,
                y + bar - 4.0,
                PERCENTILES[index].0,
                escape(&micros(value))
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A ramp's steps: the rate asked (requests/s) against the p99 of the step's ok
/// answers (µs; `None` when nothing was answered ok), with `limit` (µs) as a line.
pub fn ramp(steps: &[(f64, Option<u64>)], limit: Option<u64>) -> String {
    let (left, top, width, height) = (70.0, 40.0, 480.0, 240.0);
    let most_rate = steps.iter().map(|s| s.0).fold(1.0, f64::max);
    let most_p99 = steps
        .iter()
        .filter_map(|s| s.1)
        .chain(limit)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |rate: f64| left + width * rate / most_rate;
    let y = |p99: u64| top + height - height * p99 as f64 / most_p99;
    let mut svg = open_svg(
        left + width + 120.0,
        top + height + 50.0,
        "Ramp: p99 of each step's ok answers by the rate asked",
    );
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{mid}\" y=\"{t}\" text-anchor=\"middle\">requests/s asked</text>\n\
         <text x=\"{lx}\" y=\"{ly}\" text-anchor=\"end\">p99</text>",
        b = top + height,
        r = left + width,
        mid = left + width / 2.0,
        t = top + height + 36.0,
        lx = left - 6.0,
        ly = top + 4.0,
    );
    if let Some(limit) = limit {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{ly:.1}\" x2=\"{r}\" y2=\"{ly:.1}\" stroke=\"#e45756\" \
             stroke-dasharray=\"4 3\"/><text x=\"{tx}\" y=\"{ty:.1}\" fill=\"#e45756\">limit {}</text>",
            escape(&micros(limit)),
            ly = y(limit),
            r = left + width,
            tx = left + width + 4.0,
            ty = y(limit) + 4.0,
        );
    }
    let points: Vec<String> = steps
        .iter()
        .filter_map(|&(rate, p99)| Some(format!("{:.1},{:.1}", x(rate), y(p99?))))
        .collect();
    if points.len() > 1 {
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#4c78a8\" stroke-width=\"2\"/>",
            points.join(" ")
        );
    }
    for &(rate, p99) in steps {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{rate}/s</text>",
            x(rate),
            top + height + 14.0
        );
        if let Some(p99) = p99 {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#4c78a8\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
                x(rate),
                y(p99),
                x(rate) + 5.0,
                y(p99) - 5.0,
                escape(&micros(p99))
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element opened is closed, in order, and attributes are quoted: enough of
    /// XML for an SVG written by this module.
    fn assert_well_formed(svg: &str) {
        let mut open = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("a tag ends") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "`<` inside a tag: {tag}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name.to_owned()), "closing {name}");
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap().to_owned());
            }
            let text = &rest[end + 1..];
            let next = text.find('<').unwrap_or(text.len());
            assert!(!text[..next].contains('>'), "a stray `>`");
            for (at, _) in text[..next].match_indices('&') {
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|entity| text[at..].starts_with(entity)),
                    "a bare `&` in {:?}",
                    &text[..next]
                );
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "left open: {open:?}");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    }

    #[test]
    fn the_latency_chart_is_well_formed_and_holds_the_figures() {
        let svg = latency(&[
            ("envelope".into(), [850, 1_200, 4_300, 12_000]),
            ("api <&>".into(), [2_000, 3_000, 9_999, 1_500_000]),
        ]);
        assert_well_formed(&svg);
        for figure in [
            "p50 850 µs",
            "p90 1.20 ms",
            "p99 4.30 ms",
            "p99.9 12.00 ms",
            "p99.9 1.50 s",
            "envelope",
            "api &lt;&amp;&gt;",
        ] {
            assert!(svg.contains(figure), "{figure} missing:\n{svg}");
        }
        // The longest bar is the whole width; the others in proportion.
        assert!(svg.contains("width=\"420.0\""), "{svg}");
    }

    #[test]
    fn the_ramp_chart_is_well_formed_and_holds_the_figures() {
        let svg = ramp(
            &[(100.0, Some(900)), (200.0, Some(2_500)), (300.0, None)],
            Some(2_000),
        );
        assert_well_formed(&svg);
        for figure in [
            "100/s",
            "200/s",
            "300/s",
            "900 µs",
            "2.50 ms",
            "limit 2.00 ms",
        ] {
            assert!(svg.contains(figure), "{figure} missing:\n{svg}");
        }
        assert_eq!(
            svg.matches("<circle").count(),
            2,
            "a point per answered step"
        );
        assert!(svg.contains("<polyline"));
    }
}
