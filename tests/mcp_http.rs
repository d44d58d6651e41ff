//! MCP over Streamable HTTP (`--mcp-http`) from raw HTTP requests: what the SDK clients never
//! send (wrong Origin, unknown protocol version, wrong media type, oversized bodies) and the
//! basics both eras rely on. The official clients are run by tests/mcp_interop.py (Python SDK)
//! and tests/mcp_http_clients.sh (MCP Inspector CLI, TypeScript SDK). Loopback only.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

/// Sends one request (with `Connection: close`) and returns (status, head, body).
fn post(addr: SocketAddr, headers: &str, body: &str) -> (u16, String, String) {
    let raw = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = request(addr, &raw);
    (r.status, r.head, r.body)
}

const JSON: &str =
    "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";

fn agent(extra: &[&str]) -> Agent {
    let mut args = vec!["--mcp-http"];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

#[test]
fn both_eras_over_post() {
    let agent = agent(&[]);
    // Handshake era: initialize, the initialized notification (202), tools/list, tools/call.
    let (status, head, body) = post(
        agent.http,
        JSON,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("mcp-session-id"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25");
    let v2 = format!("{JSON}MCP-Protocol-Version: 2025-11-25\r\n");
    let (status, _, body) = post(
        agent.http,
        &v2,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!((status, body.as_str()), (202, ""));
    let (status, _, body) = post(
        agent.http,
        &v2,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"query_backend_health","arguments":{"unreachable_only":true}}}"#,
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["structuredContent"]["unreachable_only"], true);

    // Stateless 2026-07-28: every request carries its version, no handshake.
    let v26 = format!("{JSON}MCP-Protocol-Version: 2026-07-28\r\n");
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;
    let (status, _, body) = post(
        agent.http,
        &v26,
        &format!(r#"{{"jsonrpc":"2.0","id":"d","method":"server/discover","params":{{{meta}}}}}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""supportedVersions":["2026-07-28","#),
        "{body}"
    );
    let (status, _, body) = post(
        agent.http,
        &v26,
        &format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{{{meta}}}}}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"query_backend_health""#), "{body}");

    // Same JSON-RPC errors as on stdio.
    let (status, _, body) = post(agent.http, JSON, "not json");
    assert_eq!(status, 200);
    assert!(body.contains(r#""code":-32700"#), "{body}");
    let (_, _, body) = post(
        agent.http,
        JSON,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
    );
    assert!(body.contains(r#""code":-32600"#), "{body}");
    let (_, _, body) = post(
        agent.http,
        JSON,
        r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#,
    );
    assert!(body.contains(r#""code":-32601"#), "{body}");
}

#[test]
fn http_level_checks() {
    let agent = agent(&[]);
    let (status, head, _) = post(agent.http, JSON, "");
    assert_eq!(status, 400, "{head}");
    let r = agent.get("/mcp");
    assert_eq!(r.status, 405);
    assert!(r.head.contains("Allow: POST\r\n"), "{}", r.head);
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    // DNS rebinding: a page from elsewhere.
    let evil = format!(
        "{JSON}Origin: http://evil.example:{}\r\n",
        agent.http.port()
    );
    assert_eq!(post(agent.http, &evil, ping).0, 403);
    assert_eq!(
        post(agent.http, &format!("{JSON}Origin: null\r\n"), ping).0,
        403
    );
    let own = format!("{JSON}Origin: http://{}\r\n", agent.http);
    assert_eq!(post(agent.http, &own, ping).0, 200);
    let bad_version = format!("{JSON}MCP-Protocol-Version: 1999-01-01\r\n");
    let (status, _, body) = post(agent.http, &bad_version, ping);
    assert_eq!(status, 400);
    assert!(body.contains("2026-07-28, 2025-11-25"), "{body}");
    assert_eq!(
        post(agent.http, "Content-Type: text/plain\r\n", ping).0,
        415
    );
    // A body over the MCP line limit: 413 without reading it all.
    let big = format!(
        "POST /mcp HTTP/1.1\r\nHost: t\r\n{JSON}Content-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    assert_eq!(request(agent.http, &big).status, 413);
    // Chunked bodies are not read: 411.
    let r = request(
        agent.http,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: t\r\n{JSON}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 411);
    // Keep-alive: two messages on one connection, the body read in pieces.
    let mut s = TcpStream::connect(agent.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let one = format!(
        "POST /mcp HTTP/1.1\r\nHost: t\r\n{JSON}Content-Length: {}\r\n\r\n",
        ping.len()
    );
    s.write_all(one.as_bytes()).unwrap();
    s.write_all(&ping.as_bytes()[..10]).unwrap();
    // A pause, so that the agent reads the body in two pieces: the pause is the test.
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&ping.as_bytes()[10..]).unwrap();
    let last = format!(
        "POST /mcp HTTP/1.1\r\nHost: t\r\n{JSON}Content-Length: {}\r\nConnection: close\r\n\r\n{ping}",
        ping.len()
    );
    s.write_all(last.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8(buf).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    assert_eq!(
        text.matches(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
            .count(),
        2,
        "{text}"
    );
}

#[test]
fn off_by_default_and_token_protected() {
    let plain = Agent::start(&[]);
    // Without --mcp-http there is no /mcp.
    assert_eq!(post(plain.http, JSON, "{}").0, 404);
    let token = TempFile::new("mcp-http-token", "mcp-tok\n");
    let agent = agent(&["--web-auth-token-file", token.path()]);
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let (status, head, _) = post(agent.http, JSON, ping);
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    let with = format!("{JSON}Authorization: Bearer mcp-tok\r\n");
    assert_eq!(post(agent.http, &with, ping).0, 200);
}
