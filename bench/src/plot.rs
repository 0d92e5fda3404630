//! `--plot FILE.svg`: hand-written SVG (no plotting dependency), viewable in any browser.
//!
//! - [`timeline`]: throughput per second (top) and latency percentiles per second on a
//!   logarithmic axis (bottom).
//! - [`distribution`]: sorted per-item times (the failover scenario: one bar per partition).

use std::fmt::Write;

use crate::load::SecondStats;

const W: f64 = 960.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 150.0;
const PLOT_W: f64 = W - LEFT - RIGHT;
const FONT: &str = "font-family=\"sans-serif\" font-size=\"12\"";

/// Colours of the latency series (p50, p90, p99, p99.9, max).
const SERIES: [(&str, &str); 5] =
    [("p50", "#1b9e77"), ("p90", "#7570b3"), ("p99", "#d95f02"), ("p99.9", "#e7298a"), ("max", "#666666")];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" upper bound and step for a linear axis from 0 to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max <= 0.0 { 1.0 } else { max };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn header(s: &mut String, h: f64, title: &str) {
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    // Long titles (the run's header) break at "; " and ": " so they fit the width.
    let mut lines: Vec<&str> = Vec::new();
    for part in title.split("; ") {
        match part.split_once(": ") {
            Some((a, b)) if part.len() > 90 => {
                lines.push(a);
                lines.push(b);
            }
            _ => lines.push(part),
        }
    }
    for (i, line) in lines.iter().take(3).enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"13\" text-anchor=\"middle\">{}</text>",
            W / 2.0,
            16 + 15 * i,
            esc(line)
        );
    }
}

/// Frame, x ticks (seconds) and a y label for a panel at `top` of height `ph`.
fn frame(s: &mut String, top: f64, ph: f64, n: usize, ylabel: &str) {
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{PLOT_W}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    let step = (n / 10).max(1);
    for i in (0..=n).step_by(step) {
        let x = LEFT + PLOT_W * i as f64 / n.max(1) as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{x:.1}\" y=\"{}\" {FONT} text-anchor=\"middle\">{i}s</text>",
            top + ph,
            top + ph + 4.0,
            top + ph + 17.0
        );
    }
    y_label(s, top, ph, ylabel);
}

/// The rotated y-axis label of a panel at `top` of height `ph`.
fn y_label(s: &mut String, top: f64, ph: f64, label: &str) {
    let _ = writeln!(
        s,
        "<text x=\"18\" y=\"{:.1}\" {FONT} transform=\"rotate(-90 18 {:.1})\" text-anchor=\"middle\">{}</text>",
        top + ph / 2.0,
        top + ph / 2.0,
        esc(label)
    );
}

/// A horizontal grid line at `y` with its axis label.
fn grid_line(s: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
         <text x=\"{}\" y=\"{:.1}\" {FONT} text-anchor=\"end\">{label}</text>",
        LEFT + PLOT_W,
        LEFT - 6.0,
        y + 4.0,
    );
}

/// Grid lines from 0 to `ymax` every `ystep` on a linear panel at `top` of height `ph`.
fn linear_grid(s: &mut String, top: f64, ph: f64, ymax: f64, ystep: f64) {
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        grid_line(s, top + ph - ph * y / ymax, &fmt_num(y));
        y += ystep;
    }
}

/// A line through `points` with its name at the right margin, at height `legend_y`.
fn series(s: &mut String, points: &[String], colour: &str, name: &str, legend_y: f64) {
    let _ = writeln!(
        s,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\
         <text x=\"{}\" y=\"{legend_y}\" {FONT} fill=\"{colour}\">{name}</text>",
        points.join(" "),
        LEFT + PLOT_W + 10.0,
    );
}

fn x_of(i: usize, n: usize) -> f64 {
    // Each second's value is drawn at the middle of its second.
    LEFT + PLOT_W * (i as f64 + 0.5) / n.max(1) as f64
}

/// Throughput and latency percentiles per second.
#[must_use]
pub fn timeline(title: &str, seconds: &[SecondStats]) -> String {
    let n = seconds.len().max(1);
    let (h, top1, ph1, top2, ph2) = (680.0, 70.0, 200.0, 320.0, 310.0);
    let mut s = String::new();
    header(&mut s, h, title);
    // Throughput panel.
    let max_ops = seconds.iter().map(|x| x.ops).max().unwrap_or(0) as f64;
    let (ymax, ystep) = nice_axis(max_ops);
    frame(&mut s, top1, ph1, n, "ops/s");
    linear_grid(&mut s, top1, ph1, ymax, ystep);
    let pts: Vec<String> = seconds
        .iter()
        .enumerate()
        .map(|(i, x)| format!("{:.1},{:.1}", x_of(i, n), top1 + ph1 - ph1 * x.ops as f64 / ymax))
        .collect();
    series(&mut s, &pts, "#1f78b4", "throughput", top1 + 14.0);
    // Latency panel, log scale in ms.
    let values: Vec<[u64; 5]> =
        seconds.iter().map(|x| [x.p50_us, x.p90_us, x.p99_us, x.p999_us, x.max_us]).collect();
    let lo = values.iter().flatten().copied().filter(|v| *v > 0).min().unwrap_or(100) as f64 / 1000.0;
    let hi = values.iter().flatten().copied().max().unwrap_or(1000) as f64 / 1000.0;
    let (dlo, dhi) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    frame(&mut s, top2, ph2, n, "latency (ms, log scale)");
    let py = |ms: f64| top2 + ph2 - ph2 * (ms.max(10f64.powf(dlo)).log10() - dlo) / (dhi - dlo);
    let mut d = dlo;
    while d <= dhi + 1e-9 {
        let v = 10f64.powf(d);
        grid_line(&mut s, py(v), &if v < 1.0 { format!("{v}") } else { fmt_num(v) });
        d += 1.0;
    }
    for (k, (name, colour)) in SERIES.iter().enumerate() {
        let pts: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v[k] > 0)
            .map(|(i, v)| format!("{:.1},{:.1}", x_of(i, n), py(v[k] as f64 / 1000.0)))
            .collect();
        series(&mut s, &pts, colour, name, top2 + 14.0 + 16.0 * k as f64);
    }
    s.push_str("</svg>\n");
    s
}

/// One bar per item, sorted ascending (e.g. each partition's failover time).
#[must_use]
pub fn distribution(title: &str, ylabel: &str, values_ms: &[f64]) -> String {
    let mut v: Vec<f64> = values_ms.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let (h, top, ph) = (420.0, 70.0, 300.0);
    let mut s = String::new();
    header(&mut s, h, title);
    let (ymax, ystep) = nice_axis(v.last().copied().unwrap_or(1.0));
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{PLOT_W}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    linear_grid(&mut s, top, ph, ymax, ystep);
    let n = v.len().max(1);
    let bw = PLOT_W / n as f64;
    for (i, x) in v.iter().enumerate() {
        let bh = ph * x / ymax;
        let _ = writeln!(
            s,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"#1f78b4\"/>",
            LEFT + bw * i as f64,
            top + ph - bh,
            (bw - 1.0).max(0.5)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" {FONT} text-anchor=\"middle\">{n} items, sorted</text>",
        LEFT + PLOT_W / 2.0,
        top + ph + 20.0,
    );
    y_label(&mut s, top, ph, ylabel);
    s.push_str("</svg>\n");
    s
}

/// Writes an SVG document to `path`.
pub fn write(path: &std::path::Path, svg: &str) -> Result<(), String> {
    std::fs::write(path, svg).map_err(|e| format!("--plot {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_is_well_formed_svg() {
        let secs: Vec<SecondStats> = (0..12)
            .map(|i| SecondStats {
                ops: 1000 + i * 10,
                errors: 0,
                p50_us: 500,
                p90_us: 900,
                p99_us: 2_000,
                p999_us: 5_000,
                max_us: 20_000,
            })
            .collect();
        let svg = timeline("a <test> & run", &secs);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;test&gt; &amp; run"));
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let empty = timeline("nothing", &[]);
        assert!(!empty.contains("NaN"));
    }

    #[test]
    fn distribution_sorts_and_has_one_bar_per_value() {
        let svg = distribution("failover", "ms", &[3.0, 1.0, 2.0]);
        assert_eq!(svg.matches("fill=\"#1f78b4\"/>").count(), 3);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn axes_are_nice() {
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        let (max, step) = nice_axis(123_456.0);
        assert!(max >= 123_456.0 && step > 0.0 && (max / step) <= 6.0);
    }
}
