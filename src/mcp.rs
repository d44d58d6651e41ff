//! The MCP server: newline-delimited JSON-RPC 2.0 in, one response line out, answering
//! from the [`Snapshot`]. It serves one tool, `query_backend_health`, so that an LLM client
//! can ask "which backends of this node are down, since when, and why" without scraping
//! /metrics.
//!
//! Why it looks like this: the agent is one mio loop with no async runtime and no serde, so
//! this module is pure. `mcp_peer.rs` frames arriving bytes into lines; [`handle_line`]
//! turns one line plus the snapshot plus the wall time into zero or one response line; the
//! tool's answer itself is rendered by `report.rs`. No I/O, no clock, no state carried
//! between lines: the same function serves stdio, every TCP connection and `POST /mcp`, and
//! tests drive it with made-up snapshots and times.
//!
//! Protocol versions (one binary, no flag, both eras at once — a "dual-era" server in the
//! words of the 2026-07-28 versioning page):
//! - Handshake era `2024-11-05`, `2025-03-26`, `2025-06-18`, `2025-11-25`: `initialize`
//!   (answers the client's version if listed in [`HANDSHAKE_VERSIONS`], else
//!   [`LATEST_HANDSHAKE_VERSION`]), `notifications/initialized`, `ping`, `tools/list`,
//!   `tools/call`.
//! - Stateless era `2026-07-28` ([`STATELESS_VERSIONS`]): a request whose `params._meta`
//!   carries `io.modelcontextprotocol/protocolVersion` is served statelessly: `server/discover`,
//!   `tools/list`, `tools/call`; every result carries `resultType: "complete"` and
//!   `_meta["io.modelcontextprotocol/serverInfo"]`; `tools/list` and `server/discover` carry the
//!   required `ttlMs`/`cacheScope`. A declared version we do not serve statelessly gets
//!   `-32022` with `data.supported` (all versions, newest first) and `data.requested`.
//!
//! Because no state is kept, a handshake-era client is answered even if it skips
//! `initialize`, and the handshake-era results are the same whatever version `initialize`
//! negotiated: fields added by later revisions (`title`, `outputSchema`, `structuredContent`,
//! `annotations`) are always present; earlier clients ignore unknown fields.
//!
//! Not supported, and why: batches (JSON-RPC arrays) get `-32600`: only 2025-03-26 allowed
//! them (2025-06-18 removed them again) and no client we know sends them; resources, prompts, completions, logging, sampling,
//! elicitation, roots, tasks, `subscriptions/listen` and pagination cursors (one tool, one
//! page) are not offered and their methods get `-32601` (an unknown cursor gets `-32602`);
//! `ping` is answered only in the handshake era (2026-07-28 removed it); `notifications/
//! cancelled` is accepted and ignored (every request is answered before the next line is
//! read, so there is nothing in flight to cancel); responses sent to us are ignored (we never
//! send requests). String ids are echoed as the same JSON string value, re-escaped by our
//! writer (byte-exact for ids without escapes); number ids are echoed byte for byte.
//!
//! Limits: [`MAX_LINE_BYTES`] per message (and `json::MAX_DEPTH`/`MAX_VALUES` inside it),
//! [`MAX_ECHOED_BYTES`] of any client-supplied name echoed in an error message. A tool answer
//! is bounded by `route::MAX_ROUTES` entries (about 1 KB each, counting the text copy).

use std::time::SystemTime;

use crate::json::{self, Value};
use crate::json_write::{self, ObjectWriter};
use crate::report::{self, Filter};
use crate::snapshot::Snapshot;

/// Longest accepted message line, without its `\n` (a `\r` before it counts). MCP messages
/// from a client are small (a `tools/call` with one boolean argument is ~300 bytes); 1 MiB
/// leaves room for any sane `_meta` while bounding what one peer can make us buffer. It
/// equals `json::MAX_INPUT_LEN`, so every line the framer passes on is parseable by size.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// At most this much of a client-supplied string (method, tool or argument name, version) is
/// echoed in an error message, so an error about a 1 MiB name is not itself 1 MiB.
pub const MAX_ECHOED_BYTES: usize = 128;

/// Handshake-era versions we negotiate in `initialize`, oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// Our answer to an `initialize` that asks for a version we do not know (the latest
/// handshake version, as the lifecycle page's version negotiation asks).
pub const LATEST_HANDSHAKE_VERSION: &str = "2025-11-25";
/// Versions served statelessly, per request, from `_meta`.
pub const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];
/// Every version we speak, newest first: `supportedVersions` of `server/discover` and
/// `data.supported` of `-32022`. Listing the handshake versions too tells a dual-era client
/// (the Python SDK's `auto` mode) that falling back to `initialize` will work.
pub const SUPPORTED_VERSIONS: [&str; 5] = [
    "2026-07-28",
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "2024-11-05",
];

pub const SERVER_NAME: &str = "sigma-agent-lite";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const TOOL_NAME: &str = "query_backend_health";

/// `ttlMs` of `tools/list` and `server/discover` (2026-07-28 caching). The tool list and
/// capabilities are fixed for the life of the process, so a client may cache them for an
/// hour; a restart (the only way they change) restarts a stdio client's session anyway.
pub const LIST_TTL_MS: u64 = 3_600_000;

// JSON-RPC 2.0 error codes, and the one MCP code we emit.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// `UnsupportedProtocolVersionError` (2026-07-28 schema).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

const INSTRUCTIONS: &str = "This agent TCP-probes the backends of the Envoy L4 routes of one \
node. Call query_backend_health to see which backends are reachable, since when, and why not.";

const TOOL_TITLE: &str = "Backend health of this node's L4 routes";
const TOOL_DESCRIPTION: &str = "Reachability of the backends of this node's Envoy L4 routes, \
from the agent's periodic TCP connect probes. Read-only: answers from the latest probe results \
and does not probe. Returns a summary (counts, last cycle time) and one entry per backend with \
reachable, latency_ms, reason (refused/timeout/unreachable/dns/error), since when \
(last_change_at) and consecutive_failures, and Envoy's own view of the same backend from its \
admin interface when the node has one (envoy: healthy, the failing health flags, the cluster, \
and mismatch: envoy_healthy_agent_down when Envoy would send traffic to a backend this host \
cannot connect to, envoy_unhealthy_agent_up the other way round). Check `status` first: before \
the first probe cycle completes, or when probing is disabled or stuck, the entries are \
incomplete or stale. Set unreachable_only to true to list only backends whose last probe \
failed, mismatch_only to true to list only backends where Envoy and this host disagree.";

/// `inputSchema` of the tool (one line: output lines must not contain a newline).
const INPUT_SCHEMA: &str = concat!(
    r#"{"type":"object","properties":{"unreachable_only":{"type":"boolean","#,
    r#""description":"true: list only backends whose last probe failed. Default false: all backends.","#,
    r#""default":false},"mismatch_only":{"type":"boolean","#,
    r#""description":"true: list only backends where Envoy's view and this host's probe disagree. Default false.","#,
    r#""default":false}},"additionalProperties":false}"#
);

// ---------------------------------------------------------------- requests

/// The answer to [`mcp_peer::Frame::TooLong`](crate::mcp_peer::Frame::TooLong): `-32700` with id null. We refused to parse the line, so
/// we know neither its id nor whether it was a valid request: "invalid JSON was received"
/// (-32700) is the honest code, -32600 would claim it parsed as JSON but not as a request.
/// It is also what `json::parse` says for an over-long input.
pub fn too_long_response(out: &mut Vec<u8>) {
    let message = format!("Parse error: message longer than {MAX_LINE_BYTES} bytes; not read");
    write_error(out, None, PARSE_ERROR, &message, None);
}

/// JSON-RPC's implementation-defined server error, for a `tools/call` refused while the agent
/// is busy writing other answers (see `mcp_peer::MAX_ANSWER_BYTES_IN_FLIGHT`).
pub const SERVER_BUSY: i64 = -32000;

/// When answers to other clients are past their budget: a `tools/call` request (the one method
/// whose answer grows with the routes) gets a `SERVER_BUSY` error saying to retry, and `true`;
/// any other line gets `false` and is answered as usual (its answer is small).
pub fn busy_response(line: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(msg) = json::parse(line) else {
        return false;
    };
    if msg.get("method").and_then(Value::as_str) != Some("tools/call") {
        return false;
    }
    let Some(id @ (Value::String(_) | Value::Number(_))) = msg.get("id") else {
        return false;
    };
    let m = "Server busy: answers to other clients are still being written; retry in a second";
    write_error(out, Some(id), SERVER_BUSY, m, None);
    true
}

/// The era a request is served in, decided from the request alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Era {
    /// No `_meta` protocol version: handshake-era semantics (`initialize` et al.).
    Handshake,
    /// `_meta` declares a stateless version: 2026-07-28 semantics.
    Stateless,
}

/// Handles one line (from [`mcp_peer::Frame::Line`](crate::mcp_peer::Frame::Line)): appends zero (notification, response, blank
/// line) or one response line ending in `\n` to `out`. `now` is the wall time for the tool's
/// `generated_at` and staleness check. Never panics on any input.
pub fn handle_line(line: &[u8], snap: &Snapshot, now: SystemTime, out: &mut Vec<u8>) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let msg = match json::parse(line) {
        Ok(v) => v,
        Err(e) => {
            return write_error(out, None, PARSE_ERROR, &format!("Parse error: {e}"), None);
        }
    };
    let members = match &msg {
        Value::Object(members) => members,
        Value::Array(_) => {
            let m = "Invalid Request: batches (JSON arrays) are not supported; send one request per line";
            return write_error(out, None, INVALID_REQUEST, m, None);
        }
        other => {
            let m = format!(
                "Invalid Request: expected a JSON-RPC request object, got {}",
                kind(other)
            );
            return write_error(out, None, INVALID_REQUEST, &m, None);
        }
    };
    let has = |key: &str| members.iter().any(|(k, _)| k == key);
    // The id, if usable: a string or a number. An id of another type (null included, which
    // MCP forbids) makes the message invalid, answered with id null.
    let id = match msg.get("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(other) => {
            let m = format!(
                "Invalid Request: id must be a string or a number, got {}",
                kind(other)
            );
            return write_error(out, None, INVALID_REQUEST, &m, None);
        }
    };
    if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        let m = r#"Invalid Request: "jsonrpc" must be "2.0""#;
        return write_error(out, id, INVALID_REQUEST, m, None);
    }
    let method = match msg.get("method") {
        Some(Value::String(m)) => m.as_str(),
        // A response (we never send requests, so it answers nothing): not replied to, as
        // replying to responses can make two confused peers loop.
        None if id.is_some() && (has("result") || has("error")) => return,
        _ => {
            let m = r#"Invalid Request: "method" must be a string"#;
            return write_error(out, id, INVALID_REQUEST, m, None);
        }
    };
    let Some(id) = id else {
        // A notification: never answered, whatever the method (notifications/initialized,
        // notifications/cancelled, anything unknown) or its params.
        return;
    };
    let empty = Value::Object(Vec::new());
    let params = match msg.get("params") {
        None => &empty,
        Some(p @ Value::Object(_)) => p,
        Some(other) => {
            let m = format!(
                "Invalid params: params must be an object, got {}",
                kind(other)
            );
            return write_error(out, Some(id), INVALID_PARAMS, &m, None);
        }
    };
    let era = match era_of(params) {
        Ok(era) => era,
        Err(Reject::Params(m)) => return write_error(out, Some(id), INVALID_PARAMS, &m, None),
        Err(Reject::Version(requested)) => {
            let m = if HANDSHAKE_VERSIONS.contains(&requested) {
                format!(
                    "Unsupported protocol version: {requested} is served only after an initialize \
                     handshake, without a protocol version in _meta"
                )
            } else {
                "Unsupported protocol version".to_owned()
            };
            let data = ErrorData::Unsupported { requested };
            return write_error(out, Some(id), UNSUPPORTED_PROTOCOL_VERSION, &m, Some(data));
        }
    };
    match (era, method) {
        (Era::Handshake, "initialize") => initialize(params, id, out),
        (Era::Handshake, "ping") => write_result(out, id, era, |_| {}),
        (Era::Stateless, "server/discover") => discover(id, out),
        (Era::Handshake, "server/discover") => {
            let m = format!(
                "Invalid params: server/discover needs params._meta with \"{META_PROTOCOL_VERSION}\" \
                 and \"{META_CLIENT_CAPABILITIES}\""
            );
            write_error(out, Some(id), INVALID_PARAMS, &m, None)
        }
        (_, "tools/list") => tools_list(params, id, era, out),
        (_, "tools/call") => tools_call(params, snap, now, id, era, out),
        (Era::Stateless, "ping" | "initialize") => {
            let m = format!(
                "Method not found: {method} does not exist in protocol version {}; \
                 omit _meta protocolVersion to use the initialize handshake",
                STATELESS_VERSIONS[0]
            );
            write_error(out, Some(id), METHOD_NOT_FOUND, &m, None)
        }
        _ => {
            let m = format!("Method not found: {}", clip(method));
            write_error(out, Some(id), METHOD_NOT_FOUND, &m, None)
        }
    }
}

enum Reject<'a> {
    /// -32602 with this message.
    Params(String),
    /// -32022 for this declared version.
    Version(&'a str),
}

/// Reads the era from `params._meta`: a declared protocol version selects the stateless era
/// (if we serve it), and then the other required per-request field must be there too.
fn era_of(params: &Value) -> Result<Era, Reject<'_>> {
    let meta = match params.get("_meta") {
        None => return Ok(Era::Handshake),
        Some(m @ Value::Object(_)) => m,
        Some(other) => {
            return Err(Reject::Params(format!(
                "Invalid params: _meta must be an object, got {}",
                kind(other)
            )))
        }
    };
    let version = match meta.get(META_PROTOCOL_VERSION) {
        None => return Ok(Era::Handshake),
        Some(Value::String(v)) => v.as_str(),
        Some(other) => {
            return Err(Reject::Params(format!(
                "Invalid params: _meta[\"{META_PROTOCOL_VERSION}\"] must be a string, got {}",
                kind(other)
            )))
        }
    };
    if !STATELESS_VERSIONS.contains(&version) {
        return Err(Reject::Version(version));
    }
    match meta.get(META_CLIENT_CAPABILITIES) {
        Some(Value::Object(_)) => Ok(Era::Stateless),
        _ => Err(Reject::Params(format!(
            "Invalid params: _meta[\"{META_CLIENT_CAPABILITIES}\"] must be an object \
             (required with \"{META_PROTOCOL_VERSION}\"; send {{}} for none)"
        ))),
    }
}

fn initialize(params: &Value, id: &Value, out: &mut Vec<u8>) {
    let Some(asked) = params.get("protocolVersion").and_then(Value::as_str) else {
        let m = "Invalid params: initialize needs params.protocolVersion (string)";
        return write_error(out, Some(id), INVALID_PARAMS, m, None);
    };
    let version = match HANDSHAKE_VERSIONS.iter().find(|v| **v == asked) {
        Some(v) => v,
        None => LATEST_HANDSHAKE_VERSION,
    };
    write_result(out, id, Era::Handshake, |r| {
        r.str("protocolVersion", version);
        r.object("capabilities").object("tools");
        write_server_info(&mut r.object("serverInfo"));
        r.str("instructions", INSTRUCTIONS);
    });
}

fn discover(id: &Value, out: &mut Vec<u8>) {
    write_result(out, id, Era::Stateless, |r| {
        {
            let mut versions = r.array("supportedVersions");
            for v in SUPPORTED_VERSIONS {
                versions.str(v);
            }
        }
        r.object("capabilities").object("tools");
        r.str("instructions", INSTRUCTIONS);
        r.u64("ttlMs", LIST_TTL_MS).str("cacheScope", "public");
    });
}

fn tools_list(params: &Value, id: &Value, era: Era, out: &mut Vec<u8>) {
    if let Some(cursor) = params.get("cursor").filter(|c| !c.is_null()) {
        let m = format!(
            "Invalid params: unknown cursor {}; tools/list has a single page, send no cursor",
            clip_value(cursor)
        );
        return write_error(out, Some(id), INVALID_PARAMS, &m, None);
    }
    write_result(out, id, era, |r| {
        {
            let mut tools = r.array("tools");
            let mut t = tools.object();
            t.str("name", TOOL_NAME)
                .str("title", TOOL_TITLE)
                .str("description", TOOL_DESCRIPTION)
                .raw("inputSchema", INPUT_SCHEMA)
                .raw("outputSchema", report::OUTPUT_SCHEMA);
            t.object("annotations")
                .str("title", TOOL_TITLE)
                .bool("readOnlyHint", true)
                .bool("idempotentHint", true)
                // It reads the agent's memory; the probing of the outside world is the
                // agent's own schedule, not something a call triggers.
                .bool("openWorldHint", false);
        }
        if era == Era::Stateless {
            r.u64("ttlMs", LIST_TTL_MS).str("cacheScope", "public");
        }
    });
}

fn tools_call(
    params: &Value,
    snap: &Snapshot,
    now: SystemTime,
    id: &Value,
    era: Era,
    out: &mut Vec<u8>,
) {
    let name = match params.get("name") {
        Some(Value::String(n)) => n.as_str(),
        _ => {
            let m = "Invalid params: tools/call needs params.name (string)";
            return write_error(out, Some(id), INVALID_PARAMS, m, None);
        }
    };
    if name != TOOL_NAME {
        let m = format!(
            "Unknown tool: {}; this server has one tool, {TOOL_NAME}",
            clip(name)
        );
        return write_error(out, Some(id), INVALID_PARAMS, &m, None);
    }
    let args: &[(String, Value)] = match params.get("arguments") {
        None | Some(Value::Null) => &[],
        Some(Value::Object(members)) => members,
        Some(other) => {
            let m = format!(
                "Invalid params: params.arguments must be an object, got {}",
                kind(other)
            );
            return write_error(out, Some(id), INVALID_PARAMS, &m, None);
        }
    };
    let mut filter = Filter::default();
    for (key, value) in args {
        match (key.as_str(), value) {
            ("unreachable_only", Value::Bool(b)) => filter.unreachable_only = *b,
            ("mismatch_only", Value::Bool(b)) => filter.mismatch_only = *b,
            (name @ ("unreachable_only" | "mismatch_only"), other) => {
                let m = format!(
                    "Invalid argument: {name} must be a JSON boolean (true or false, \
                     without quotes), got {} {}. Example: {{\"{name}\": true}}",
                    kind(other),
                    clip_value(other)
                );
                return tool_error(out, id, era, &m);
            }
            (other, _) => {
                let m = format!(
                    "Invalid argument: unknown argument \"{}\". The arguments are \
                     unreachable_only and mismatch_only (booleans, optional); send {{}} for all \
                     backends, {{\"unreachable_only\": true}} for the failing ones or \
                     {{\"mismatch_only\": true}} for those where Envoy disagrees",
                    clip(other)
                );
                return tool_error(out, id, era, &m);
            }
        }
    }
    let mut body = Vec::new();
    report::write_health(&mut body, snap, now, filter);
    // Our writer copies only &str and ASCII, so this is always UTF-8; no panic regardless.
    let Ok(text) = String::from_utf8(body) else {
        let m = "Internal error: the health report was not UTF-8";
        return write_error(out, Some(id), INTERNAL_ERROR, m, None);
    };
    write_result(out, id, era, |r| {
        {
            let mut content = r.array("content");
            content.object().str("type", "text").str("text", &text);
        }
        r.raw("structuredContent", &text);
        r.bool("isError", false);
    });
}

/// A tool execution error: a result with `isError: true`, so the model sees what to fix.
fn tool_error(out: &mut Vec<u8>, id: &Value, era: Era, message: &str) {
    write_result(out, id, era, |r| {
        {
            let mut content = r.array("content");
            content.object().str("type", "text").str("text", message);
        }
        r.bool("isError", true);
    });
}

// ---------------------------------------------------------------- writing responses

enum ErrorData<'a> {
    Unsupported { requested: &'a str },
}

/// `{"jsonrpc":"2.0","id":ID,"result":{...}}\n`. In the stateless era the result also gets
/// `resultType` and the serverInfo `_meta`, as 2026-07-28 asks of every result.
fn write_result(out: &mut Vec<u8>, id: &Value, era: Era, body: impl FnOnce(&mut ObjectWriter<'_>)) {
    {
        let mut o = ObjectWriter::new(out);
        o.str("jsonrpc", "2.0").value("id", id);
        let mut r = o.object("result");
        if era == Era::Stateless {
            r.str("resultType", "complete");
        }
        body(&mut r);
        if era == Era::Stateless {
            write_server_info(&mut r.object("_meta").object(META_SERVER_INFO));
        }
    }
    out.push(b'\n');
}

/// `{"jsonrpc":"2.0","id":ID|null,"error":{"code":..,"message":..[,"data":..]}}\n`.
fn write_error(
    out: &mut Vec<u8>,
    id: Option<&Value>,
    code: i64,
    message: &str,
    data: Option<ErrorData<'_>>,
) {
    {
        let mut o = ObjectWriter::new(out);
        o.str("jsonrpc", "2.0");
        match id {
            Some(id) => o.value("id", id),
            None => o.null("id"),
        };
        let mut e = o.object("error");
        e.i64("code", code).str("message", message);
        if let Some(ErrorData::Unsupported { requested }) = data {
            let mut d = e.object("data");
            {
                let mut supported = d.array("supported");
                for v in SUPPORTED_VERSIONS {
                    supported.str(v);
                }
            }
            d.str("requested", requested);
        }
    }
    out.push(b'\n');
}

fn write_server_info(o: &mut ObjectWriter<'_>) {
    o.str("name", SERVER_NAME).str("version", SERVER_VERSION);
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `s`, cut to [`MAX_ECHOED_BYTES`] at a character boundary.
fn clip(s: &str) -> String {
    if s.len() <= MAX_ECHOED_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_ECHOED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A client value as JSON text, cut to [`MAX_ECHOED_BYTES`].
fn clip_value(v: &Value) -> String {
    let mut text = Vec::new();
    match v {
        Value::Array(_) => text.extend_from_slice(b"[...]"),
        Value::Object(_) => text.extend_from_slice(b"{...}"),
        scalar => json_write::write_value(&mut text, scalar),
    }
    clip(&String::from_utf8_lossy(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{failed, reachable, route};
    use crate::snapshot::{ProbeResult, Reason};
    use std::time::{Duration, UNIX_EPOCH};

    /// 2026-11-26T04:27:48.123Z
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_667_268_123)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn empty_snapshot() -> Snapshot {
        Snapshot::new(true, secs(10), t0())
    }

    /// Three routes: one up, one refused, one not probed; one completed cycle.
    fn probed_snapshot() -> Snapshot {
        let mut s = Snapshot::new(true, secs(10), t0());
        s.set_routes(vec![
            route("layer4-01", "tcp-hk01", 10001, "192.0.2.10", 443),
            route("layer4-01", "tcp-\"sg\"\\02", 10002, "db.example.com", 5432),
            route("layer4-01", "tcp-new", 10003, "2001:db8::1", 80),
        ]);
        let up = ProbeResult {
            address: Some("192.0.2.10:443".parse().unwrap()),
            ..reachable(Duration::from_micros(2345))
        };
        s.record(0, up, t0() + secs(1));
        let refused = ProbeResult {
            address: Some("198.51.100.7:5432".parse().unwrap()),
            dns_duration: Some(Duration::from_millis(3)),
            detail: Some("Connection refused (os error 111)".into()),
            ..failed(Reason::Refused)
        };
        s.record(1, refused, t0() + secs(2));
        s.cycle_done(Duration::from_millis(1500), false, t0() + secs(2));
        s
    }

    /// Runs one line; checks the output is at most one line; parses it.
    fn run(line: &str, snap: &Snapshot, now: SystemTime) -> Option<Value> {
        let mut out = Vec::new();
        handle_line(line.as_bytes(), snap, now, &mut out);
        if out.is_empty() {
            return None;
        }
        assert_eq!(
            out.last(),
            Some(&b'\n'),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        Some(json::parse(&out).expect("our output is JSON"))
    }

    fn call(line: &str) -> Value {
        run(line, &probed_snapshot(), t0() + secs(5)).expect("a response")
    }

    fn raw_out(line: &str) -> String {
        let mut out = Vec::new();
        handle_line(
            line.as_bytes(),
            &probed_snapshot(),
            t0() + secs(5),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    fn error_code(v: &Value) -> i64 {
        v.get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
            .unwrap()
    }

    fn path<'a>(v: &'a Value, keys: &[&str]) -> &'a Value {
        keys.iter().fold(v, |v, k| {
            v.get(k).unwrap_or_else(|| panic!("no {k} in {v:?}"))
        })
    }

    fn s<'a>(v: &'a Value, keys: &[&str]) -> &'a str {
        path(v, keys).as_str().unwrap()
    }

    const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

    fn modern(id: u32, method: &str, params: &str) -> String {
        let sep = if params.is_empty() { "" } else { "," };
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{{params}{sep}{META}}}}}"#
        )
    }

    #[test]
    fn too_long_response_is_parse_error_with_null_id() {
        let mut out = Vec::new();
        too_long_response(&mut out);
        let v = json::parse(&out).unwrap();
        assert_eq!(error_code(&v), PARSE_ERROR);
        assert!(v.get("id").unwrap().is_null());
        assert!(out.ends_with(b"}\n"));
    }

    // ------------------------------------------------------------ handshake era

    #[test]
    fn initialize_answers_a_supported_version_with_that_version() {
        for version in HANDSHAKE_VERSIONS {
            let v = call(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
            ));
            assert_eq!(s(&v, &["result", "protocolVersion"]), version);
            assert_eq!(s(&v, &["result", "serverInfo", "name"]), SERVER_NAME);
            assert!(path(&v, &["result", "capabilities", "tools"])
                .as_object()
                .is_some());
            assert!(v.get("result").unwrap().get("resultType").is_none());
        }
    }

    #[test]
    fn initialize_answers_an_unknown_version_with_the_latest_handshake_version() {
        for asked in ["2099-01-01", "2026-07-28", ""] {
            let v = call(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{asked}","capabilities":{{}}}}}}"#
            ));
            assert_eq!(
                s(&v, &["result", "protocolVersion"]),
                LATEST_HANDSHAKE_VERSION
            );
        }
        let v = call(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#);
        assert_eq!(error_code(&v), INVALID_PARAMS);
        let v = call(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#);
        assert_eq!(error_code(&v), INVALID_PARAMS);
    }

    #[test]
    fn exact_handshake_era_shapes() {
        assert_eq!(
            raw_out(r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#),
            "{\"jsonrpc\":\"2.0\",\"id\":\"p\",\"result\":{}}\n"
        );
        let init = raw_out(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
        );
        let expected = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"protocolVersion\":\"2025-06-18\",\
             \"capabilities\":{{\"tools\":{{}}}},\"serverInfo\":{{\"name\":\"sigma-agent-lite\",\
             \"version\":\"{SERVER_VERSION}\"}},\"instructions\":\"{INSTRUCTIONS}\"}}}}\n"
        );
        assert_eq!(init, expected);
    }

    #[test]
    fn tools_list_in_the_handshake_era() {
        let v = call(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#);
        let result = v.get("result").unwrap();
        assert!(result.get("resultType").is_none());
        assert!(result.get("ttlMs").is_none());
        let tools = result.get("tools").unwrap().as_array().unwrap();
        assert_eq!(tools.len(), 1);
        let tool = &tools[0];
        assert_eq!(s(tool, &["name"]), TOOL_NAME);
        assert_eq!(s(tool, &["inputSchema", "type"]), "object");
        assert_eq!(
            path(tool, &["inputSchema", "additionalProperties"]).as_bool(),
            Some(false)
        );
        assert_eq!(
            s(
                tool,
                &["inputSchema", "properties", "unreachable_only", "type"]
            ),
            "boolean"
        );
        assert_eq!(s(tool, &["outputSchema", "type"]), "object");
        assert_eq!(
            path(tool, &["annotations", "readOnlyHint"]).as_bool(),
            Some(true)
        );
        assert_eq!(
            path(tool, &["annotations", "openWorldHint"]).as_bool(),
            Some(false)
        );
        // No params at all is fine too; a cursor is not (single page).
        let v = call(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
        assert!(v.get("result").is_some());
        let v = call(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"x"}}"#);
        assert_eq!(error_code(&v), INVALID_PARAMS);
    }

    #[test]
    fn notifications_get_no_reply() {
        let snap = probed_snapshot();
        for line in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            r#"{"jsonrpc":"2.0","method":"no/such/method"}"#,
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"nope"}}"#,
            r#"{"jsonrpc":"2.0","method":"tools/list","params":"not an object"}"#,
            r#"{"jsonrpc":"2.0","method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"1900-01-01"}}}"#,
            "",
            "  \t ",
        ] {
            assert_eq!(run(line, &snap, t0()), None, "{line}");
        }
    }

    #[test]
    fn responses_sent_to_us_get_no_reply() {
        let snap = probed_snapshot();
        assert_eq!(
            run(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, &snap, t0()),
            None
        );
        assert_eq!(
            run(
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#,
                &snap,
                t0()
            ),
            None
        );
    }

    // ------------------------------------------------------------ stateless era

    #[test]
    fn server_discover_shape() {
        let out = raw_out(&modern(7, "server/discover", ""));
        let expected = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{{\"resultType\":\"complete\",\
             \"supportedVersions\":[\"2026-07-28\",\"2025-11-25\",\"2025-06-18\",\"2025-03-26\",\
             \"2024-11-05\"],\"capabilities\":{{\"tools\":{{}}}},\"instructions\":\"{INSTRUCTIONS}\",\
             \"ttlMs\":3600000,\"cacheScope\":\"public\",\"_meta\":{{\
             \"io.modelcontextprotocol/serverInfo\":{{\"name\":\"sigma-agent-lite\",\
             \"version\":\"{SERVER_VERSION}\"}}}}}}}}\n"
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn server_discover_without_meta_is_invalid_params() {
        let v = call(r#"{"jsonrpc":"2.0","id":1,"method":"server/discover"}"#);
        assert_eq!(error_code(&v), INVALID_PARAMS);
    }

    #[test]
    fn stateless_tools_list_and_call_carry_result_type_and_cache_fields() {
        let v = call(&modern(3, "tools/list", ""));
        assert_eq!(s(&v, &["result", "resultType"]), "complete");
        assert_eq!(path(&v, &["result", "ttlMs"]).as_u64(), Some(LIST_TTL_MS));
        assert_eq!(s(&v, &["result", "cacheScope"]), "public");
        assert_eq!(
            s(&v, &["result", "_meta", META_SERVER_INFO, "name"]),
            SERVER_NAME
        );
        let v = call(&modern(
            4,
            "tools/call",
            r#""name":"query_backend_health","arguments":{"unreachable_only":true}"#,
        ));
        assert_eq!(s(&v, &["result", "resultType"]), "complete");
        assert_eq!(path(&v, &["result", "isError"]).as_bool(), Some(false));
        assert_eq!(
            path(&v, &["result", "structuredContent", "backends"])
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn stateless_era_has_no_ping_or_initialize() {
        for method in ["ping", "initialize"] {
            let v = call(&modern(5, method, ""));
            assert_eq!(error_code(&v), METHOD_NOT_FOUND, "{method}");
        }
    }

    #[test]
    fn unsupported_declared_version_is_32022_with_data() {
        for requested in ["1900-01-01", "2025-11-25", "2026-07-29"] {
            let line = format!(
                r#"{{"jsonrpc":"2.0","id":"v","method":"tools/list","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{requested}","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
            );
            let v = call(&line);
            assert_eq!(error_code(&v), UNSUPPORTED_PROTOCOL_VERSION);
            assert_eq!(s(&v, &["id"]), "v");
            assert_eq!(s(&v, &["error", "data", "requested"]), requested);
            let supported: Vec<&str> = path(&v, &["error", "data", "supported"])
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(supported, SUPPORTED_VERSIONS);
        }
        assert!(raw_out(&modern(1, "x", "").replace("2026-07-28", "1900-01-01")).contains(
            r#""error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2026-07-28","#
        ));
    }

    #[test]
    fn malformed_meta_is_invalid_params() {
        for params in [
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}"#,
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":[]}}"#,
            r#"{"_meta":{"io.modelcontextprotocol/protocolVersion":20260728}}"#,
            r#"{"_meta":"2026-07-28"}"#,
        ] {
            let v = call(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{params}}}"#
            ));
            assert_eq!(error_code(&v), INVALID_PARAMS, "{params}");
        }
        // _meta without a protocol version (e.g. a progress token) stays handshake-era.
        let v = call(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"progressToken":1}}}"#,
        );
        assert!(path(&v, &["result"]).get("resultType").is_none());
    }

    // ------------------------------------------------------------ errors and ids

    #[test]
    fn parse_errors_are_32700_with_null_id() {
        let deep = "[".repeat(json::MAX_DEPTH + 1) + &"]".repeat(json::MAX_DEPTH + 1);
        let snap = probed_snapshot();
        for line in [
            "not json".as_bytes(),
            br#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffng\"}",
            deep.as_bytes(),
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#,
        ] {
            let mut out = Vec::new();
            handle_line(line, &snap, t0(), &mut out);
            let v = json::parse(&out).unwrap();
            assert_eq!(
                error_code(&v),
                PARSE_ERROR,
                "{}",
                String::from_utf8_lossy(line)
            );
            assert!(v.get("id").unwrap().is_null());
        }
    }

    #[test]
    fn invalid_requests_are_32600() {
        for (line, id_null) in [
            (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, true),
            ("[]", true),
            ("42", true),
            (r#""ping""#, true),
            (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, true),
            (r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#, true),
            (r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#, true),
            (r#"{"id":1,"method":"ping"}"#, false),
            (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, false),
            (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, false),
            (r#"{"jsonrpc":"2.0","id":1}"#, false),
            (r#"{"jsonrpc":"2.0","method":7}"#, true),
            (r#"{"foo":"bar"}"#, true),
        ] {
            let v = call(line);
            assert_eq!(error_code(&v), INVALID_REQUEST, "{line}");
            assert_eq!(v.get("id").unwrap().is_null(), id_null, "{line}");
        }
    }

    #[test]
    fn unknown_methods_are_32601_in_both_eras() {
        let v = call(r#"{"jsonrpc":"2.0","id":1,"method":"resources/list"}"#);
        assert_eq!(error_code(&v), METHOD_NOT_FOUND);
        let v = call(&modern(1, "prompts/list", ""));
        assert_eq!(error_code(&v), METHOD_NOT_FOUND);
        // A huge method name is not echoed whole.
        let long = "m".repeat(10_000);
        let out = raw_out(&format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{long}"}}"#));
        assert!(out.len() < 400, "{}", out.len());
    }

    #[test]
    fn bad_params_are_32602() {
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query_backend_health","arguments":[true]}}"#,
        ] {
            assert_eq!(error_code(&call(line)), INVALID_PARAMS, "{line}");
        }
    }

    #[test]
    fn unknown_tool_is_32602() {
        let v = call(
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}"#,
        );
        assert_eq!(error_code(&v), INVALID_PARAMS);
        assert!(s(&v, &["error", "message"]).contains("Unknown tool: rm_rf"));
        let v = call(&modern(9, "tools/call", r#""name":"rm_rf""#));
        assert_eq!(error_code(&v), INVALID_PARAMS);
    }

    #[test]
    fn ids_are_echoed_exactly() {
        for id in [
            "0",
            "-1",
            "123456789012345678901234567890",
            "1.50",
            "1e3",
            r#""abc""#,
            r#""""#,
            r#""with \"quotes\" and \\ and \n and \u00e9 and é""#,
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            let out = raw_out(&line);
            let sent = json::parse(id.as_bytes()).unwrap();
            let got = json::parse(out.as_bytes()).unwrap();
            assert_eq!(got.get("id"), Some(&sent), "{id}");
            if !id.contains('\\') {
                assert!(out.contains(&format!("\"id\":{id},")), "{id} -> {out}");
            }
            // Errors echo the id too.
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"nope"}}"#);
            assert_eq!(
                json::parse(raw_out(&line).as_bytes()).unwrap().get("id"),
                Some(&sent)
            );
        }
    }

    // ------------------------------------------------------------ the tool

    fn tool_call(args: &str, snap: &Snapshot, now: SystemTime) -> Value {
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"query_backend_health","arguments":{args}}}}}"#
        );
        run(&line, snap, now)
            .unwrap()
            .get("result")
            .unwrap()
            .clone()
    }

    /// The structured content, checked to equal the text block.
    fn structured(result: &Value) -> Value {
        assert_eq!(result.get("isError").and_then(Value::as_bool), Some(false));
        let content = result.get("content").unwrap().as_array().unwrap();
        assert_eq!(content.len(), 1);
        assert_eq!(s(&content[0], &["type"]), "text");
        let text = json::parse(s(&content[0], &["text"]).as_bytes()).unwrap();
        let sc = result.get("structuredContent").unwrap().clone();
        assert_eq!(text, sc);
        sc
    }

    #[test]
    fn tool_reports_every_backend() {
        let now = t0() + secs(5);
        let sc = structured(&tool_call("{}", &probed_snapshot(), now));
        assert_eq!(s(&sc, &["status"]), "current");
        assert_eq!(
            s(&sc, &["note"]),
            "1 of 3 backends reachable, 1 unreachable, 1 not probed"
        );
        assert_eq!(s(&sc, &["generated_at"]), "2026-11-26T04:27:53.123Z");
        let summary = sc.get("summary").unwrap();
        for (key, n) in [
            ("routes", 3),
            ("reachable", 1),
            ("unreachable", 1),
            ("not_probed", 1),
            ("cycles_completed", 1),
        ] {
            assert_eq!(summary.get(key).and_then(Value::as_u64), Some(n), "{key}");
        }
        assert_eq!(s(summary, &["last_cycle_at"]), "2026-11-26T04:27:50.123Z");
        assert_eq!(
            path(summary, &["last_cycle_duration_seconds"]).as_f64(),
            Some(1.5)
        );
        let b = sc.get("backends").unwrap().as_array().unwrap();
        assert_eq!(b.len(), 3);
        // Up.
        assert_eq!(s(&b[0], &["node"]), "layer4-01");
        assert_eq!(s(&b[0], &["route"]), "tcp-hk01");
        assert_eq!(path(&b[0], &["listen_port"]).as_u64(), Some(10001));
        assert_eq!(s(&b[0], &["backend"]), "192.0.2.10:443");
        assert_eq!(s(&b[0], &["address"]), "192.0.2.10");
        assert_eq!(path(&b[0], &["reachable"]).as_bool(), Some(true));
        assert_eq!(
            path(&b[0], &["latency_ms"]).as_number().unwrap().raw(),
            "2.345"
        );
        assert!(path(&b[0], &["reason"]).is_null());
        assert!(path(&b[0], &["detail"]).is_null());
        assert_eq!(s(&b[0], &["last_probe_at"]), "2026-11-26T04:27:49.123Z");
        assert_eq!(s(&b[0], &["last_change_at"]), "2026-11-26T04:27:49.123Z");
        assert_eq!(path(&b[0], &["consecutive_failures"]).as_u64(), Some(0));
        // Down; the route name with quotes and a backslash survives.
        assert_eq!(s(&b[1], &["route"]), "tcp-\"sg\"\\02");
        assert_eq!(s(&b[1], &["address"]), "198.51.100.7");
        assert_eq!(path(&b[1], &["reachable"]).as_bool(), Some(false));
        assert!(path(&b[1], &["latency_ms"]).is_null());
        assert_eq!(s(&b[1], &["reason"]), "refused");
        assert_eq!(s(&b[1], &["detail"]), "Connection refused (os error 111)");
        assert_eq!(path(&b[1], &["consecutive_failures"]).as_u64(), Some(1));
        // Never probed.
        assert_eq!(s(&b[2], &["backend"]), "[2001:db8::1]:80");
        for key in [
            "address",
            "reachable",
            "latency_ms",
            "reason",
            "last_probe_at",
        ] {
            assert!(path(&b[2], &[key]).is_null(), "{key}");
        }
    }

    #[test]
    fn tool_filters_unreachable_only() {
        let snap = probed_snapshot();
        let sc = structured(&tool_call(r#"{"unreachable_only":true}"#, &snap, t0()));
        assert_eq!(path(&sc, &["unreachable_only"]).as_bool(), Some(true));
        let b = sc.get("backends").unwrap().as_array().unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(s(&b[0], &["reason"]), "refused");
        // The summary still counts everything.
        assert_eq!(path(&sc, &["summary", "routes"]).as_u64(), Some(3));
        let sc = structured(&tool_call(r#"{"unreachable_only":false}"#, &snap, t0()));
        assert_eq!(sc.get("backends").unwrap().as_array().unwrap().len(), 3);
        // No arguments at all, or null, means the default.
        let line = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query_backend_health"}}"#;
        let r = run(line, &snap, t0()).unwrap();
        let sc = structured(r.get("result").unwrap());
        assert_eq!(sc.get("backends").unwrap().as_array().unwrap().len(), 3);
    }

    #[test]
    fn tool_says_when_no_cycle_has_completed() {
        let mut snap = empty_snapshot();
        snap.set_routes(vec![route("n", "r", 1, "192.0.2.1", 80)]);
        let sc = structured(&tool_call("{}", &snap, t0()));
        assert_eq!(s(&sc, &["status"]), "awaiting_first_cycle");
        assert!(s(&sc, &["note"]).starts_with("no probe cycle has completed yet"));
        assert!(path(&sc, &["summary", "last_cycle_at"]).is_null());
        assert!(path(&sc, &["summary", "last_cycle_duration_seconds"]).is_null());
        assert_eq!(path(&sc, &["summary", "not_probed"]).as_u64(), Some(1));
        // And with no routes at all, still says so.
        let sc = structured(&tool_call("{}", &empty_snapshot(), t0()));
        assert_eq!(s(&sc, &["status"]), "awaiting_first_cycle");
        assert_eq!(sc.get("backends").unwrap().as_array().unwrap().len(), 0);
    }

    #[test]
    fn tool_says_when_probing_is_disabled() {
        let mut snap = Snapshot::new(false, secs(10), t0());
        snap.set_routes(vec![route("n", "r", 1, "192.0.2.1", 80)]);
        let sc = structured(&tool_call("{}", &snap, t0()));
        assert_eq!(s(&sc, &["status"]), "probing_disabled");
        assert!(s(&sc, &["note"]).contains("probing is disabled"));
        assert_eq!(
            path(&sc, &["summary", "probe_enabled"]).as_bool(),
            Some(false)
        );
    }

    #[test]
    fn tool_says_when_results_are_stale() {
        let snap = probed_snapshot(); // last cycle ended at t0+2s, interval 10s
        let sc = structured(&tool_call("{}", &snap, t0() + secs(32)));
        assert_eq!(s(&sc, &["status"]), "current");
        let sc = structured(&tool_call("{}", &snap, t0() + secs(33)));
        assert_eq!(s(&sc, &["status"]), "stale");
        assert!(s(&sc, &["note"]).contains("31s ago"));
        // A clock that went backwards is not stale.
        let sc = structured(&tool_call("{}", &snap, t0()));
        assert_eq!(s(&sc, &["status"]), "current");
    }

    #[test]
    fn wrong_arguments_are_tool_errors_saying_what_to_send() {
        let snap = probed_snapshot();
        for (args, needle) in [
            (r#"{"unreachable_only":"yes"}"#, "must be a JSON boolean"),
            (r#"{"unreachable_only":1}"#, "got a number 1"),
            (r#"{"unreachable_only":null}"#, "got null"),
            (r#"{"node":"layer4-01"}"#, "unknown argument \"node\""),
        ] {
            let r = tool_call(args, &snap, t0());
            assert_eq!(
                r.get("isError").and_then(Value::as_bool),
                Some(true),
                "{args}"
            );
            assert!(r.get("structuredContent").is_none());
            let text = s(&r.get("content").unwrap().as_array().unwrap()[0], &["text"]);
            assert!(text.contains(needle), "{text}");
            assert!(text.contains("unreachable_only"), "{text}");
        }
        let r = tool_call(r#"{"unreachable_only":"yes"}"#, &snap, t0());
        let text = s(&r.get("content").unwrap().as_array().unwrap()[0], &["text"]);
        assert!(text.contains(r#"got a string "yes""#), "{text}");
    }

    #[test]
    fn schemas_are_json_and_match_what_is_emitted() {
        let input = json::parse(INPUT_SCHEMA.as_bytes()).unwrap();
        assert_eq!(s(&input, &["type"]), "object");
        let output = json::parse(report::OUTPUT_SCHEMA.as_bytes()).unwrap();
        // Single-type dialects: no type arrays, no null inside an enum (anyOf instead).
        assert!(
            !report::OUTPUT_SCHEMA.contains(r#""type":["#),
            "{}",
            report::OUTPUT_SCHEMA
        );
        assert!(
            !report::OUTPUT_SCHEMA.contains(",null]"),
            "{}",
            report::OUTPUT_SCHEMA
        );
        assert_eq!(
            report::OUTPUT_SCHEMA.matches(r#"{"type":"null"}"#).count(),
            16
        );
        let keys = |v: &Value| -> Vec<String> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, _)| k.clone())
                .collect()
        };
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect()
        };
        let sc = structured(&tool_call("{}", &probed_snapshot(), t0()));
        assert_eq!(keys(&sc), names(path(&output, &["required"])));
        assert_eq!(keys(path(&output, &["properties"])), keys(&sc));
        let summary_schema = path(&output, &["properties", "summary"]);
        assert_eq!(
            keys(sc.get("summary").unwrap()),
            names(path(summary_schema, &["required"]))
        );
        let item = path(&output, &["properties", "backends", "items"]);
        for b in sc.get("backends").unwrap().as_array().unwrap() {
            assert_eq!(keys(b), names(path(item, &["required"])));
            assert_eq!(keys(b), keys(path(item, &["properties"])));
        }
    }
}
