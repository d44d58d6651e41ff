//! The answer of the MCP tool `query_backend_health`: the [`Snapshot`] rendered as one JSON
//! object, the twin of `metrics.rs` (which renders the same snapshot as Prometheus text).
//! `mcp.rs` parses and dispatches the request and wraps this object in the JSON-RPC result;
//! everything the operator reads about a backend is decided here.
//!
//! Pure: snapshot, filter and wall time in, bytes out. [`OUTPUT_SCHEMA`] describes exactly
//! what [`write_health`] emits, so the two live side by side. Times are RFC 3339 in UTC with
//! milliseconds ([`rfc3339`]); durations are decimal seconds or milliseconds made the way
//! `metrics.rs` makes them (`millis_f64`, `seconds_f64`), so they print short (`0.000343`).
//!
//! Size: one entry per route, at most `route::MAX_ROUTES` entries of about 330 bytes each
//! (`mcp.rs` sends the object twice, as text and as `structuredContent`).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::json_write::ObjectWriter;
use crate::metrics::{millis_f64, seconds_f64};
use crate::snapshot::{Outcome, RouteState, Snapshot};

/// The tool reports `status: "stale"` when the last cycle ended more than this many cycle
/// periods ago (period = max(interval, last cycle duration)). One late cycle is an overrun;
/// three in a row means the prober is stuck and the numbers must not be trusted.
pub const STALE_AFTER_PERIODS: u32 = 3;

/// `outputSchema` of the tool: exactly what `write_health` emits. Nullable fields are
/// `anyOf` a single-type schema and `{"type":"null"}`, never a type array
/// (`"type":["string","null"]`) nor a `null` in an `enum`: single-type dialects (the OpenAPI
/// subset of Gemini function declarations, MCP Inspector `--strict`) reject those, and every
/// JSON Schema validator reads `anyOf` the same.
pub const OUTPUT_SCHEMA: &str = concat!(
    r#"{"type":"object","properties":{"#,
    r#""status":{"type":"string","enum":["current","stale","awaiting_first_cycle","probing_disabled"]},"#,
    r#""note":{"type":"string"},"#,
    r#""generated_at":{"type":"string","format":"date-time"},"#,
    r#""unreachable_only":{"type":"boolean"},"#,
    r#""mismatch_only":{"type":"boolean"},"#,
    r#""summary":{"type":"object","properties":{"#,
    r#""routes":{"type":"integer","minimum":0},"#,
    r#""reachable":{"type":"integer","minimum":0},"#,
    r#""unreachable":{"type":"integer","minimum":0},"#,
    r#""not_probed":{"type":"integer","minimum":0},"#,
    r#""mismatches":{"type":"integer","minimum":0},"#,
    r#""cycles_completed":{"type":"integer","minimum":0},"#,
    r#""last_cycle_at":{"anyOf":[{"type":"string","format":"date-time"},{"type":"null"}]},"#,
    r#""last_cycle_duration_seconds":{"anyOf":[{"type":"number","minimum":0},{"type":"null"}]},"#,
    r#""probe_enabled":{"type":"boolean"},"#,
    r#""probe_interval_seconds":{"type":"number","minimum":0}},"#,
    r#""required":["routes","reachable","unreachable","not_probed","mismatches","cycles_completed","#,
    r#""last_cycle_at","last_cycle_duration_seconds","probe_enabled","probe_interval_seconds"]},"#,
    r#""envoy_admin":{"type":"array","items":{"type":"object","properties":{"#,
    r#""node":{"type":"string"},"#,
    r#""admin_port":{"type":"integer","minimum":1,"maximum":65535},"#,
    r#""up":{"anyOf":[{"type":"boolean"},{"type":"null"}]},"#,
    r#""error":{"anyOf":[{"type":"string"},{"type":"null"}]},"#,
    r#""fetch_duration_seconds":{"anyOf":[{"type":"number","minimum":0},{"type":"null"}]},"#,
    r#""hosts":{"type":"integer","minimum":0}},"#,
    r#""required":["node","admin_port","up","error","fetch_duration_seconds","hosts"]}},"#,
    r#""backends":{"type":"array","items":{"type":"object","properties":{"#,
    r#""node":{"type":"string"},"#,
    r#""route":{"type":"string"},"#,
    r#""listen_port":{"type":"integer","minimum":1,"maximum":65535},"#,
    r#""backend":{"type":"string"},"#,
    r#""address":{"anyOf":[{"type":"string"},{"type":"null"}]},"#,
    r#""reachable":{"anyOf":[{"type":"boolean"},{"type":"null"}]},"#,
    r#""latency_ms":{"anyOf":[{"type":"number","minimum":0},{"type":"null"}]},"#,
    r#""reason":{"anyOf":[{"type":"string","enum":["refused","timeout","unreachable","dns","error"]},{"type":"null"}]},"#,
    r#""detail":{"anyOf":[{"type":"string"},{"type":"null"}]},"#,
    r#""last_probe_at":{"anyOf":[{"type":"string","format":"date-time"},{"type":"null"}]},"#,
    r#""last_change_at":{"anyOf":[{"type":"string","format":"date-time"},{"type":"null"}]},"#,
    r#""consecutive_failures":{"type":"integer","minimum":0},"#,
    r#""envoy":{"anyOf":[{"type":"object","properties":{"#,
    r#""healthy":{"anyOf":[{"type":"boolean"},{"type":"null"}]},"#,
    r#""mismatch":{"anyOf":[{"type":"string","enum":["envoy_healthy_agent_down","envoy_unhealthy_agent_up"]},{"type":"null"}]},"#,
    r#""mismatch_since":{"anyOf":[{"type":"string","format":"date-time"},{"type":"null"}]},"#,
    r#""cluster":{"type":"string"},"#,
    r#""hosts":{"type":"integer","minimum":1},"#,
    r#""eds_health_status":{"type":"string"},"#,
    r#""failing":{"type":"array","items":{"type":"string"}}},"#,
    r#""required":["healthy","mismatch","mismatch_since","cluster","hosts","eds_health_status","failing"]},{"type":"null"}]}},"#,
    r#""required":["node","route","listen_port","backend","address","reachable","latency_ms","#,
    r#""reason","detail","last_probe_at","last_change_at","consecutive_failures","envoy"]}}},"#,
    r#""required":["status","note","generated_at","unreachable_only","mismatch_only","summary","envoy_admin","backends"]}"#
);

/// The tool's filters; both on lists the backends that pass both.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    pub unreachable_only: bool,
    pub mismatch_only: bool,
}

/// Writes the tool's structured answer (see `OUTPUT_SCHEMA`).
pub fn write_health(out: &mut Vec<u8>, snap: &Snapshot, now: SystemTime, filter: Filter) {
    let (up, down, not_probed) = snap.summary();
    let total = snap.routes.len();
    let (status, note) = status_note(snap, now, up, down, not_probed);
    let mut o = ObjectWriter::new(out);
    o.str("status", status)
        .str("note", &note)
        .str("generated_at", &rfc3339(now))
        .bool("unreachable_only", filter.unreachable_only)
        .bool("mismatch_only", filter.mismatch_only);
    {
        let mut s = o.object("summary");
        s.u64("routes", total as u64)
            .u64("reachable", up as u64)
            .u64("unreachable", down as u64)
            .u64("not_probed", not_probed as u64)
            .u64("mismatches", snap.mismatches() as u64)
            .u64("cycles_completed", snap.cycles_total);
        match snap.last_cycle_end {
            Some(t) => s.str("last_cycle_at", &rfc3339(t)),
            None => s.null("last_cycle_at"),
        };
        match snap.last_cycle_duration {
            Some(d) => s.f64("last_cycle_duration_seconds", seconds_f64(d)),
            None => s.null("last_cycle_duration_seconds"),
        };
        s.bool("probe_enabled", snap.probe_enabled)
            .f64("probe_interval_seconds", seconds_f64(snap.interval));
    }
    {
        let mut admin = o.array("envoy_admin");
        for n in &snap.envoy_nodes {
            let mut a = admin.object();
            a.str("node", &n.node)
                .u64("admin_port", n.admin_port.into());
            match n.up {
                Some(up) => a.bool("up", up),
                None => a.null("up"),
            };
            match &n.last_error {
                Some(e) => a.str("error", e),
                None => a.null("error"),
            };
            match n.fetch_duration {
                Some(d) => a.f64("fetch_duration_seconds", seconds_f64(d)),
                None => a.null("fetch_duration_seconds"),
            };
            a.u64("hosts", n.hosts as u64);
        }
    }
    let mut backends = o.array("backends");
    for state in &snap.routes {
        if filter.unreachable_only && state.reachable() != Some(false) {
            continue;
        }
        if filter.mismatch_only && state.mismatch.is_none() {
            continue;
        }
        write_backend(&mut backends.object(), state);
    }
}

fn status_note(
    snap: &Snapshot,
    now: SystemTime,
    up: usize,
    down: usize,
    not_probed: usize,
) -> (&'static str, String) {
    let total = snap.routes.len();
    if !snap.probe_enabled {
        return (
            "probing_disabled",
            format!(
                "health probing is disabled (the agent runs without --health-probe): the {total} \
                 backends are listed but none is probed, so nothing is known about reachability"
            ),
        );
    }
    let Some(last_end) = snap.last_cycle_end.filter(|_| snap.cycles_total > 0) else {
        return (
            "awaiting_first_cycle",
            format!(
                "no probe cycle has completed yet: {} of {total} backends probed so far \
                 ({up} reachable, {down} unreachable); the rest are not known yet",
                up + down
            ),
        );
    };
    let period = snap
        .interval
        .max(snap.last_cycle_duration.unwrap_or_default());
    let age = now.duration_since(last_end).unwrap_or_default();
    let counts =
        format!("{up} of {total} backends reachable, {down} unreachable, {not_probed} not probed");
    if age > period.saturating_mul(STALE_AFTER_PERIODS) {
        (
            "stale",
            format!(
                "the last probe cycle ended {}s ago but cycles run every {}s: the prober may \
                 be stuck and these results may be out of date; {counts}",
                age.as_secs(),
                period.as_secs_f64()
            ),
        )
    } else {
        ("current", counts)
    }
}

fn write_backend(b: &mut ObjectWriter<'_>, state: &RouteState) {
    let route = &state.route;
    b.str("node", &route.node)
        .str("route", &route.name)
        .u64("listen_port", u64::from(route.listen_port))
        .str("backend", &route.backend);
    let last = state.last.as_ref();
    match last.and_then(|(r, _)| r.address) {
        Some(addr) => b.str("address", &addr.ip().to_string()),
        None => b.null("address"),
    };
    match last.map(|(r, _)| r.outcome) {
        None => b.null("reachable").null("latency_ms").null("reason"),
        Some(Outcome::Reachable { latency }) => b
            .bool("reachable", true)
            .f64("latency_ms", millis_f64(latency))
            .null("reason"),
        Some(Outcome::Failed(reason)) => b
            .bool("reachable", false)
            .null("latency_ms")
            .str("reason", reason.as_str()),
    };
    match last.and_then(|(r, _)| r.detail.as_deref()) {
        Some(d) => b.str("detail", d),
        None => b.null("detail"),
    };
    match last {
        Some((_, at)) => b.str("last_probe_at", &rfc3339(*at)),
        None => b.null("last_probe_at"),
    };
    match state.last_change {
        Some(at) => b.str("last_change_at", &rfc3339(at)),
        None => b.null("last_change_at"),
    };
    b.u64("consecutive_failures", state.consecutive_failures);
    let Some(envoy) = &state.envoy else {
        b.null("envoy");
        return;
    };
    let mut e = b.object("envoy");
    match envoy.healthy {
        Some(h) => e.bool("healthy", h),
        None => e.null("healthy"),
    };
    match state.mismatch {
        Some((m, since)) => e
            .str("mismatch", m.as_str())
            .str("mismatch_since", &rfc3339(since)),
        None => e.null("mismatch").null("mismatch_since"),
    };
    e.str("cluster", &envoy.cluster)
        .u64("hosts", envoy.hosts as u64)
        .str("eds_health_status", &envoy.eds_health_status);
    let mut failing = e.array("failing");
    for name in envoy.flag_names() {
        failing.str(name);
    }
}

// ---------------------------------------------------------------- RFC 3339

/// `t` as RFC 3339 in UTC with milliseconds, `2026-11-26T04:27:48.123Z` (truncated, not
/// rounded). Times before 1970 work too; years outside 0000-9999 are not valid RFC 3339
/// and are written with more digits or a sign, which no real clock produces.
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, millis): (i64, u32) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_millis(),
        ),
        Err(e) => {
            // Before the epoch: floor to the millisecond below.
            let d = e.duration();
            let back_ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
            let back_ms = i64::try_from(back_ms).unwrap_or(i64::MAX);
            (
                (-back_ms).div_euclid(1000),
                (-back_ms).rem_euclid(1000) as u32,
            )
        }
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    s
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn durations_print_as_short_decimals() {
        let mut out = Vec::new();
        let mut o = ObjectWriter::new(&mut out);
        o.f64("s", seconds_f64(Duration::from_micros(343)))
            .f64("ms", millis_f64(Duration::from_micros(97)))
            .f64("i", seconds_f64(secs(30)))
            .f64("d", seconds_f64(Duration::from_millis(1500)));
        o.finish();
        assert_eq!(out, br#"{"s":0.000343,"ms":0.097,"i":30,"d":1.5}"#);
    }

    #[test]
    fn rfc3339_formats_utc_with_millis() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t0 = UNIX_EPOCH + Duration::from_millis(1_795_667_268_123);
        assert_eq!(rfc3339(t0), "2026-11-26T04:27:48.123Z");
        let at = |s: u64, ms: u64| UNIX_EPOCH + secs(s) + Duration::from_millis(ms);
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_868_799, 999)), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339(at(1_709_164_800, 5)), "2024-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_798_761_599, 0)), "2026-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(at(253_402_300_799, 0)), "9999-12-31T23:59:59.000Z");
        // Sub-millisecond parts are truncated.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_nanos(1_999_999)),
            "1970-01-01T00:00:00.001Z"
        );
        // Before the epoch: floor.
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(1)),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_nanos(1)),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - secs(86_400)),
            "1969-12-31T00:00:00.000Z"
        );
    }

    #[test]
    fn civil_from_days_matches_a_day_by_day_walk() {
        // Walk 1970-01-01 forward ~130 years, day by day, with a naive calendar.
        let (mut y, mut m, mut d) = (1970_i64, 1_u32, 1_u32);
        for day in 0..48_000 {
            assert_eq!(civil_from_days(day), (y, m, d), "day {day}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[m as usize - 1] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
