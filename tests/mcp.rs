//! MCP end to end: the real binary over TCP and over stdio (pipe and regular file), every kind
//! of bad input followed by a good request that must still be answered.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PING: &str = r#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#;
const PONG: &str = r#"{"jsonrpc":"2.0","id":"after","result":{}}"#;

/// (line sent, text its answer must contain); `None` = no answer (a notification).
fn bad_inputs() -> Vec<(Vec<u8>, Option<&'static str>)> {
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    vec![
        (b"not json".to_vec(), Some("-32700")),
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping""#.to_vec(), Some("-32700")),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffng\"}".to_vec(), Some("-32700")),
        (deep.into_bytes(), Some("-32700")),
        (br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.to_vec(), Some("-32600")),
        (br#""just a string""#.to_vec(), Some("-32600")),
        (br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_vec(), Some("-32600")),
        (br#"{"jsonrpc":"2.0","id":7,"method":"no/such"}"#.to_vec(), Some(r#""id":7,"error":{"code":-32601"#)),
        (
            br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"nope"}}"#.to_vec(),
            Some(r#""id":8,"error":{"code":-32602"#),
        ),
        (
            br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"query_backend_health","arguments":{"unreachable_only":"yes"}}}"#.to_vec(),
            Some(r#""isError":true"#),
        ),
        (br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(), None),
        (vec![b'x'; (1 << 20) + 10], Some("-32700")),
    ]
}

/// The agent serving MCP on its stdin and stdout, with `extra` flags; stderr as `stderr`.
fn mcp_stdio(extra: &[&str], stdin: Stdio, stderr: Stdio) -> Child {
    Command::new(BIN)
        .args(["--mcp-stdio", "--metrics-port", "0"])
        .args(extra)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// One answer line, without its line end.
fn read_line(from: &mut impl BufRead) -> String {
    let mut line = String::new();
    from.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

/// Sends each bad line then a ping, and checks the answers in order.
fn check_conversation(mut send: impl FnMut(&[u8]), mut recv: impl FnMut() -> String) {
    for (line, want) in bad_inputs() {
        send(&line);
        send(b"\n");
        send(PING.as_bytes());
        send(b"\n");
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        if let Some(want) = want {
            let answer = recv();
            assert!(
                answer.contains(want),
                "for {shown:?} expected {want:?}, got {answer}"
            );
        }
        assert_eq!(recv(), PONG, "after {shown:?}");
    }
}

#[test]
fn tcp_bad_input_then_good_requests() {
    let mut agent = Agent::start(&["--mcp-listen", "127.0.0.1:0"]);
    let addr = agent.mcp_addr();
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    check_conversation(|b| writer.write_all(b).unwrap(), || read_line(&mut reader));
    // Two clients at once, each with its own buffer: a half-sent line on one doesn't block the other.
    let mut a = TcpStream::connect(addr).unwrap();
    a.write_all(br#"{"jsonrpc":"2.0","id":1,"#).unwrap();
    let b = TcpStream::connect(addr).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&b).write_all(format!("{PING}\n").as_bytes()).unwrap();
    assert_eq!(read_line(&mut BufReader::new(&b)), PONG);
    a.write_all(b"\"method\":\"ping\"}\n").unwrap();
    // /metrics still answers beside MCP.
    assert_eq!(agent.get("/healthz").status, 200);
}

#[test]
fn stdio_pipe_bad_input_then_good_requests_and_eof_exits_zero() {
    let mut child = mcp_stdio(&[], Stdio::piped(), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    check_conversation(|b| stdin.write_all(b).unwrap(), || read_line(&mut stdout));
    drop(stdin);
    let t = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "exit took {:?}",
        t.elapsed()
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "stdout carries nothing but answers");
}

#[test]
fn stdio_from_a_regular_file_answers_everything_then_exits() {
    let mut requests = String::new();
    for id in 0..100 {
        requests.push_str(&format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n"
        ));
    }
    requests.push_str(r#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#);
    let file = TempFile::new("mcp-requests.jsonl", &requests);
    let input = std::fs::File::open(&file.path).unwrap();
    let out = Command::new(BIN)
        .args(["--mcp-stdio", "--metrics-port", "0"])
        .stdin(input)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        101,
        "every request answered, the last one without a newline too"
    );
    assert_eq!(lines[42], r#"{"jsonrpc":"2.0","id":42,"result":{}}"#);
    assert!(
        lines[100].contains("query_backend_health"),
        "{}",
        lines[100]
    );
}

#[test]
fn stdio_leaves_the_inherited_descriptor_flags_as_they_were() {
    // The agent's stdin is a pipe we keep a handle on; after it exits, the pipe's file
    // status flags (shared with the agent through the open file description) are unchanged.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let before = flags(&reader);
    let mut child = mcp_stdio(&[], reader.try_clone().unwrap().into(), Stdio::null());
    writer.write_all(format!("{PING}\n").as_bytes()).unwrap();
    let answer = read_line(&mut BufReader::new(child.stdout.as_mut().unwrap()));
    assert_eq!(answer, PONG);
    assert_eq!(
        flags(&reader),
        before,
        "O_NONBLOCK leaked into the shared pipe while running"
    );
    drop(writer);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(flags(&reader), before);
}

fn flags(fd: &impl std::os::fd::AsRawFd) -> i32 {
    // SAFETY: F_GETFL on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }
}

#[test]
fn tool_answers_from_the_same_snapshot_as_metrics() {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let closed = closed_port();
    let routes = write_routes(
        "mcp-tool",
        &[
            format!("n1 up 10001 127.0.0.1:{port}"),
            format!("n1 down 10002 127.0.0.1:{closed}"),
        ],
    );
    let probing = ["--health-probe", "--health-probe-interval", "100ms"];
    let mut child = mcp_stdio(
        &[&probing[..], &["--routes-file", routes.path()]].concat(),
        Stdio::piped(),
        Stdio::null(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let call = |only: bool| health_call(&format!("{{\"unreachable_only\":{only}}}"));
    let answer = wait_until(Duration::from_secs(5), "a cycle has completed", || {
        stdin.write_all(call(false).as_bytes()).unwrap();
        Some(read_line(&mut stdout)).filter(|line| !line.contains("awaiting_first_cycle"))
    });
    assert!(
        answer.contains(r#""route":"up""#) && answer.contains(r#""route":"down""#),
        "{answer}"
    );
    assert!(answer.contains(r#""reason":"refused""#), "{answer}");
    stdin.write_all(call(true).as_bytes()).unwrap();
    let line = read_line(&mut stdout);
    assert!(
        line.contains(r#""route":"down""#) && !line.contains(r#""route":"up""#),
        "{line}"
    );
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
