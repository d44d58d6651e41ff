//! The baseline agent (`BENCH_BASELINE_AGENT`: another agent binary, e.g. a build of an older
//! commit), measured in the same rounds as the agent with both sources, and its section of
//! the report: agent vs baseline, a table and its JSON.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::measure::{num, prober_json, Window};
use crate::report::table_row;
use crate::Settings;

/// The baseline agent's windows (`BENCH_BASELINE_AGENT`), same rounds as the agent's.
#[derive(Default)]
pub struct Baseline {
    pub file: Vec<Window>,
    pub pg: Vec<Window>,
    pub error: Option<String>,
}

/// Agent vs baseline agent, file and database source, same rounds: a table and its JSON.
pub fn baseline_report(s: &Settings, file: &[Window], pg: &[Window], base: &Baseline) -> Value {
    let Some(bin) = &s.baseline else {
        return Value::Null;
    };
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).ok();
    let (af, bf, ap, bp) = (
        prober_json(file),
        prober_json(&base.file),
        prober_json(pg),
        prober_json(&base.pg),
    );
    println!();
    println!(
        "== baseline agent {} vs the agent: same rounds, same targets, median of {} rounds ==",
        bin.display(),
        base.file.len()
    );
    if let Some(e) = &base.error {
        println!("baseline with the PostgreSQL source FAILED: {e}");
    }
    let widths = [38, 10, 10, 10];
    table_row(&widths, &["", "agent", "baseline", "ratio"]);
    let row = |name: &str, a: f64, b: f64, scale: f64| {
        let two = |x: f64| format!("{x:.2}");
        table_row(
            &widths,
            &[name, &two(a / scale), &two(b / scale), &two(a / b)],
        );
    };
    for (what, a, b) in [("file source", &af, &bf), ("PostgreSQL source", &ap, &bp)] {
        row(
            &format!("peak RSS, {what} (MiB)"),
            num(a, "peak_rss_kib"),
            num(b, "peak_rss_kib"),
            1024.0,
        );
        row(
            "  RSS anonymous (MiB)",
            num(a, "rss_anon_kib"),
            num(b, "rss_anon_kib"),
            1024.0,
        );
        row(
            "  RSS file-backed (MiB)",
            num(a, "rss_file_kib"),
            num(b, "rss_file_kib"),
            1024.0,
        );
        row(
            &format!("CPU per probe, {what} (µs)"),
            num(a, "cpu_us_per_probe"),
            num(b, "cpu_us_per_probe"),
            1.0,
        );
        for k in ["threads", "epoll_instances", "open_fds"] {
            row(&format!("  {k}, {what}"), num(a, k), num(b, k), 1.0);
        }
    }
    let (sa, sb) = (size(&s.agent), size(bin));
    row(
        "binary size (KiB)",
        sa.map_or(f64::NAN, |x| x as f64),
        sb.map_or(f64::NAN, |x| x as f64),
        1024.0,
    );
    json!({
        "binary": bin.display().to_string(),
        "binary_bytes": sb,
        "agent_binary_bytes": sa,
        "file": {"agent": af, "baseline": bf},
        "postgres": {"agent": ap, "baseline": bp},
        "error": base.error,
    })
}
