//! Micro-benchmarks of the pure parts, without sockets: the /metrics renderer, the HTTP
//! request-head parser, the routes-file parser, the MCP `tools/call` handler and the reading
//! of Envoy's admin `/clusters?format=json` (HTTP session, JSON, matching).
//!
//! A hand-written harness (`harness = false`) instead of criterion, to keep build time low on
//! small shared machines: each benchmark is calibrated so one sample takes about
//! [`SAMPLE_TARGET`], then [`SAMPLES`] samples are timed and the median time per iteration is
//! reported (with the fastest and slowest sample, to show the spread).
//!
//! Run: `cargo bench --bench micro` (optionally with a name filter: `cargo bench --bench micro
//! -- render`). With `BENCH_MICRO_JSON=path` the results are also written as JSON, which
//! `scripts/bench.sh` merges into `target/bench.json`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sigma_agent_lite::fixtures;
use sigma_agent_lite::http::{self, Parse};
use sigma_agent_lite::json;
use sigma_agent_lite::mcp;
use sigma_agent_lite::metrics::{self, ProcessStats};
use sigma_agent_lite::route::{self, Route};
use sigma_agent_lite::scrape_cache::ScrapeCache;

/// Samples per benchmark; the median of these is the result.
const SAMPLES: usize = 21;
/// Wall time one sample aims for (iterations are calibrated to it).
const SAMPLE_TARGET: Duration = Duration::from_millis(10);

/// One benchmark's result, in nanoseconds per iteration.
struct Result {
    name: String,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    iters_per_sample: u64,
    /// Size of what one iteration produced (a response), when that is worth reporting.
    output_bytes: Option<usize>,
}

/// Times `f`: calibrates the iteration count, then takes [`SAMPLES`] samples.
fn bench(name: &str, mut f: impl FnMut()) -> Result {
    // Warm up and calibrate: double the iterations until one sample takes long enough.
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let took = t.elapsed();
        if took >= SAMPLE_TARGET / 2 || iters >= 1 << 30 {
            let per = took.as_secs_f64() / iters as f64;
            iters = ((SAMPLE_TARGET.as_secs_f64() / per.max(1e-9)) as u64).max(1);
            break;
        }
        iters *= 2;
    }
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    Result {
        name: name.to_owned(),
        median_ns: samples[SAMPLES / 2],
        min_ns: samples[0],
        max_ns: samples[SAMPLES - 1],
        iters_per_sample: iters,
        output_bytes: None,
    }
}

fn bench_render(n: usize) -> Result {
    let snap = fixtures::fleet(n).0;
    let process = process_figures();
    // The HTTP connection reuses its buffer between scrapes; so does this.
    let mut out = Vec::new();
    metrics::render(&snap, &process, &mut out);
    let size = out.len();
    let mut r = bench(&format!("render /metrics, {n} routes"), || {
        out.clear();
        metrics::render(black_box(&snap), black_box(&process), &mut out);
        black_box(&out);
    });
    r.name = format!("{} ({} KiB)", r.name, size / 1024);
    r
}

fn process_figures() -> ProcessStats {
    ProcessStats {
        resident_bytes: Some(2_000_000),
        cpu_seconds: Some(1.25),
        open_fds: Some(9),
        max_fds: Some(1024),
        virtual_bytes: Some(9_000_000),
        virtual_max_bytes: Some(u64::MAX),
        log_lines_dropped: 0,
    }
}

/// A change of the snapshot as a gzip scrape pays for it once: render the snapshot part and
/// deflate it (level 6) — what every gzip scrape would cost without the cache.
fn bench_render_gzip(n: usize) -> Result {
    let mut snap = fixtures::fleet(n).0;
    let process = process_figures();
    let mut cache = ScrapeCache::new();
    let mut out = Vec::new();
    cache.write(&snap, &process, true, &mut out);
    let size = out.len();
    let mut r = bench(&format!("render + gzip /metrics, {n} routes"), || {
        snap.touch();
        out.clear();
        cache.write(black_box(&snap), black_box(&process), true, &mut out);
        black_box(&out);
    });
    r.name = format!("{} ({} KiB)", r.name, size / 1024);
    r.output_bytes = Some(size);
    r
}

/// A scrape served from the cache (snapshot unchanged): copy the cached part, render and
/// (for gzip) deflate the process tail, append the trailer.
fn bench_cached_scrape(n: usize, gzip: bool) -> Result {
    let snap = fixtures::fleet(n).0;
    let process = process_figures();
    let mut cache = ScrapeCache::new();
    let mut out = Vec::new();
    cache.write(&snap, &process, gzip, &mut out);
    let size = out.len();
    let form = if gzip { "gzip" } else { "identity" };
    let mut r = bench(&format!("cached scrape, {form}, {n} routes"), || {
        out.clear();
        cache.write(black_box(&snap), black_box(&process), gzip, &mut out);
        black_box(&out);
    });
    assert_eq!(cache.renders, 1);
    r.name = format!("{} ({} KiB)", r.name, size / 1024);
    r.output_bytes = Some(size);
    r
}

/// What Prometheus 2.x sends for a scrape.
const SCRAPE_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9102\r\n\
User-Agent: Prometheus/2.45.0\r\n\
Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\
Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n";

fn bench_parse_head() -> Result {
    assert!(matches!(http::parse_head(SCRAPE_HEAD), Parse::Complete(..)));
    bench("http::parse_head, Prometheus scrape head", || {
        black_box(http::parse_head(black_box(SCRAPE_HEAD)));
    })
}

fn bench_parse_routes(n: usize) -> Result {
    let mut text = String::from("# node route listen backend\n");
    for r in fixtures::routes(n) {
        text.push_str(&format!(
            "{} {} {} {}\n",
            r.node, r.name, r.listen_port, r.backend
        ));
    }
    assert_eq!(route::parse_routes(&text).map(|r| r.len()), Ok(n));
    bench(&format!("route::parse_routes, {n} lines"), || {
        black_box(route::parse_routes(black_box(&text)).ok());
    })
}

/// `/proc/self` figures, read before every /metrics render (the scrape's I/O part).
fn bench_process_stats() -> Result {
    bench("metrics::ProcessStats::read (/proc/self)", || {
        black_box(ProcessStats::read());
    })
}

/// A `tools/call` request line as an MCP client sends it (handshake era, no `_meta`).
fn tools_call_line(arguments: &str) -> String {
    format!(
        r#"{{"method":"tools/call","params":{{"name":"{}","arguments":{arguments}}},"jsonrpc":"2.0","id":7}}"#,
        mcp::TOOL_NAME
    )
}

/// `mcp::handle_line` of one `tools/call` of `query_backend_health` on 1,000 probed routes:
/// parse the line, dispatch, write the report (JSON text plus its structured copy) into a
/// buffer reused between calls, as a connection does.
fn bench_mcp_tools_call(unreachable_only: bool) -> Result {
    let n = 1_000;
    let (snap, now) = fixtures::fleet(n);
    let arguments = if unreachable_only {
        r#"{"unreachable_only":true}"#
    } else {
        "{}"
    };
    let line = tools_call_line(arguments);
    let mut out = Vec::new();
    mcp::handle_line(line.as_bytes(), &snap, now, &mut out);
    // Check that this is the tool's answer, not an error, with the expected backends.
    let response =
        json::parse(out.strip_suffix(b"\n").expect("one response line")).expect("response is JSON");
    let result = response.get("result").expect("a result, not an error");
    assert_eq!(result.get("isError").and_then(|v| v.as_bool()), Some(false));
    let structured = result.get("structuredContent").expect("structuredContent");
    assert_eq!(
        structured.get("status").and_then(|v| v.as_str()),
        Some("current")
    );
    let listed = structured
        .get("backends")
        .and_then(|v| v.as_array())
        .map_or(0, <[_]>::len);
    assert_eq!(listed, if unreachable_only { n / 10 } else { n });
    let size = out.len();
    let what = if unreachable_only {
        "unreachable_only"
    } else {
        "all"
    };
    let mut r = bench(&format!("mcp tools/call, {what}: {listed}"), || {
        out.clear();
        mcp::handle_line(black_box(line.as_bytes()), black_box(&snap), now, &mut out);
        black_box(&out);
    });
    r.name = format!("{} of {n} ({} KiB)", r.name, size / 1024);
    r.output_bytes = Some(size);
    r
}

/// `json::parse` of the `tools/call` request line alone (the first step of `handle_line`).
fn bench_mcp_parse_request() -> Result {
    let line = tools_call_line(r#"{"unreachable_only":true}"#);
    assert!(json::parse(line.as_bytes()).is_ok());
    bench(
        &format!("json::parse, tools/call line ({} B)", line.len()),
        || {
            black_box(json::parse(black_box(line.as_bytes())).is_ok());
        },
    )
}

/// An Envoy admin answer with `n` hosts (50 per cluster) in the admin handler's format: what
/// `tests/common/envoy_admin.rs` serves, pretty-printed with per-host stats.
fn envoy_answer(n: usize) -> Vec<u8> {
    let host = |i: usize| {
        format!(
            "    {{\n     \"address\": {{\n      \"socket_address\": {{\n       \"address\": \"127.{}.{}.{}\",\n       \"port_value\": 443\n      }}\n     }},\n     \"stats\": [\n      {{\n       \"name\": \"cx_connect_fail\"\n      }},\n      {{\n       \"value\": \"{}\",\n       \"name\": \"cx_total\"\n      }},\n      {{\n       \"name\": \"rq_error\"\n      }},\n      {{\n       \"name\": \"rq_success\"\n      }},\n      {{\n       \"name\": \"rq_timeout\"\n      }},\n      {{\n       \"name\": \"rq_total\"\n      }},\n      {{\n       \"value\": \"1\",\n       \"type\": \"GAUGE\",\n       \"name\": \"cx_active\"\n      }},\n      {{\n       \"type\": \"GAUGE\",\n       \"name\": \"rq_active\"\n      }}\n     ],\n     \"health_status\": {{\n      \"eds_health_status\": \"HEALTHY\"\n     }},\n     \"weight\": 1,\n     \"locality\": {{}}\n    }}",
            100 + (i >> 16),
            (i >> 8) & 255,
            i & 255,
            100 + i
        )
    };
    let mut clusters = Vec::new();
    for c in 0..n.div_ceil(50) {
        let hosts: Vec<String> = (c * 50..n.min(c * 50 + 50)).map(host).collect();
        clusters.push(format!(
            "  {{\n   \"name\": \"bulk_{c}\",\n   \"host_statuses\": [\n{}\n   ],\n   \"circuit_breakers\": {{\n    \"thresholds\": [\n     {{\n      \"max_connections\": 1024,\n      \"max_pending_requests\": 1024,\n      \"max_requests\": 1024,\n      \"max_retries\": 3\n     }},\n     {{\n      \"priority\": \"HIGH\",\n      \"max_connections\": 1024,\n      \"max_pending_requests\": 1024,\n      \"max_requests\": 1024,\n      \"max_retries\": 3\n     }}\n    ]\n   }},\n   \"observability_name\": \"bulk_{c}\"\n  }}",
            hosts.join(",\n")
        ));
    }
    let body = format!(
        "{{\n \"cluster_statuses\": [\n{}\n ]\n}}\n",
        clusters.join(",\n")
    );
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nserver: envoy\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in body.as_bytes().chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One cycle's work on one node's admin answer of `n` hosts, once the bytes have arrived:
/// the HTTP session over 64 KiB reads, the JSON, and matching `n` routes against the hosts.
fn bench_envoy_admin(n: usize) -> Result {
    use sigma_agent_lite::envoy;
    use sigma_agent_lite::http_client::{Progress, Session};
    let answer = envoy_answer(n);
    let routes: Vec<Route> = (0..n)
        .map(|i| {
            let host = format!("127.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255);
            fixtures::route("n", &format!("r{i}"), 1 + i as u16, &host, 443)
        })
        .collect();
    let mut r = bench(
        &format!("envoy admin answer, {n} hosts: read+parse+match"),
        || {
            let mut s = Session::get(
                "127.0.0.1:9901",
                "/clusters?format=json",
                envoy::MAX_ADMIN_BODY_BYTES,
            );
            let mut body = None;
            for piece in answer.chunks(64 * 1024) {
                if let Progress::Done(resp) = s.receive(piece) {
                    body = Some(resp.body);
                }
            }
            let view = envoy::parse_clusters(&body.unwrap()).unwrap();
            let matched = routes
                .iter()
                .filter(|r| envoy::match_route(&view, r, None).is_some())
                .count();
            assert_eq!(matched, n);
            black_box(matched);
        },
    );
    r.output_bytes = Some(answer.len());
    r
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with `-` filters by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    type Bench = (&'static str, fn() -> Result);
    let benches: [Bench; 16] = [
        ("render_1000", || bench_render(1_000)),
        ("render_10000", || bench_render(10_000)),
        ("render_gzip_1000", || bench_render_gzip(1_000)),
        ("render_gzip_10000", || bench_render_gzip(10_000)),
        ("cached_scrape_identity_1000", || {
            bench_cached_scrape(1_000, false)
        }),
        ("cached_scrape_gzip_1000", || {
            bench_cached_scrape(1_000, true)
        }),
        ("cached_scrape_identity_10000", || {
            bench_cached_scrape(10_000, false)
        }),
        ("cached_scrape_gzip_10000", || {
            bench_cached_scrape(10_000, true)
        }),
        ("parse_head", bench_parse_head),
        ("parse_routes_1000", || bench_parse_routes(1_000)),
        ("parse_routes_10000", || bench_parse_routes(10_000)),
        ("process_stats_read", bench_process_stats),
        ("mcp_tools_call_all_1000", || bench_mcp_tools_call(false)),
        ("mcp_tools_call_unreachable_1000", || {
            bench_mcp_tools_call(true)
        }),
        ("mcp_parse_request", bench_mcp_parse_request),
        ("envoy_admin_1000", || bench_envoy_admin(1_000)),
    ];
    println!(
        "{:<48} {:>12} {:>12} {:>12}",
        "benchmark (median of 21 samples)", "median", "min", "max"
    );
    let mut json = Vec::new();
    for (key, run) in benches {
        if filter.as_deref().is_some_and(|f| !key.contains(f)) {
            continue;
        }
        let r = run();
        println!(
            "{:<48} {:>12} {:>12} {:>12}",
            r.name,
            fmt_ns(r.median_ns),
            fmt_ns(r.min_ns),
            fmt_ns(r.max_ns)
        );
        let bytes = r
            .output_bytes
            .map_or(String::new(), |b| format!(", \"output_bytes\": {b}"));
        json.push(format!(
            "  \"{key}\": {{\"median_ns\": {:.1}, \"min_ns\": {:.1}, \"max_ns\": {:.1}, \"samples\": {SAMPLES}, \"iters_per_sample\": {}{bytes}}}",
            r.median_ns, r.min_ns, r.max_ns, r.iters_per_sample
        ));
    }
    if let Ok(path) = std::env::var("BENCH_MICRO_JSON") {
        let text = format!("{{\n{}\n}}\n", json.join(",\n"));
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("error: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
