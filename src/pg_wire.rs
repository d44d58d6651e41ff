//! The PostgreSQL wire session of the route source, sans-IO: bytes from the server in,
//! progress out, bytes to send kept in [`Session::output`]. No socket, no clock, no TLS: the
//! driver (`pg_conn` moves the bytes, `source_pg` owns the deadline), so every path here (startup,
//! each authentication method, the pipelined cycle, errors, notices anywhere) is tested from
//! byte scripts.
//!
//! Messages are encoded and parsed by `postgres-protocol` (the rust-postgres project's
//! sans-IO crate), which also does SCRAM-SHA-256 (the server's signature is verified) and md5.
//!
//! One cycle is one round trip: a simple query `BEGIN ...; SET LOCAL ...`, the registration
//! and routes queries on the unnamed statement (Parse/Bind/Execute/Sync each), and `COMMIT`,
//! all written before any answer is read. Four ReadyForQuery messages end it; the first
//! ErrorResponse explains the others (a failed statement aborts the transaction, the rest
//! fail with 25P02, and COMMIT becomes ROLLBACK). Nothing outlives the transaction, so this
//! works through PgBouncer in transaction pooling mode. Parameters and results are text.
//!
//! Limits: [`MAX_MESSAGE_BYTES`] per server message; at most [`MAX_VPS_ROWS`] and
//! [`MAX_ROUTE_ROWS`] rows are kept (the queries' LIMITs; a server sending more is cut);
//! authentication: SCRAM-SHA-256 (without channel binding), md5, cleartext (only when the
//! driver allows it: TLS or a local socket), trust. GSSAPI, SSPI and Kerberos are refused
//! with a message naming the fix.

use std::fmt;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;

/// Largest server message accepted: a route row is under 1 KiB (text fields are cut to 254
/// characters by the query), an error under a few KiB. Anything bigger is not our server.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Registration rows kept (the query asks for at most `source_pg::MAX_VPS_IDS`).
pub const MAX_VPS_ROWS: usize = 16;
/// Route rows kept: `route::MAX_ROUTES` + 1, so the cap can be noticed.
pub const MAX_ROUTE_ROWS: usize = crate::route::MAX_ROUTES + 1;

/// PostgreSQL type oids of the parameters.
const TEXT_OID: u32 = 25;
const INT8_OID: u32 = 20;

/// Who we are, sent in the startup message.
pub struct Startup<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
}

/// The cycle's queries and their parameters.
pub struct Cycle<'a> {
    /// `BEGIN ...; SET LOCAL ...`, one simple query.
    pub begin_sql: &'a str,
    /// Registration query: `$1` text, `$2` int8; one text column.
    pub vps_sql: &'a str,
    pub vps_params: (&'a str, i64),
    /// Routes query: `$1` text, `$2` int8; five text-encodable columns.
    pub routes_sql: &'a str,
    pub routes_params: (&'a str, i64),
}

/// One row of the routes query, as text. `None` is SQL NULL.
pub type Row = Vec<Option<String>>;

/// What the cycle read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    pub vps_ids: Vec<Option<String>>,
    pub routes: Vec<Row>,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Startup sent; authentication and parameters being exchanged.
    Starting,
    /// Ready for a cycle.
    Idle,
    /// A cycle's pipeline is out; answers are coming.
    Reading,
    /// An error ended the session; drop it.
    Broken,
}

/// What [`Session::receive`] got to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Need more bytes (or there is output to send).
    Pending,
    /// Startup done: [`Session::start_cycle`] may be called.
    Ready,
    /// The cycle's answers are complete.
    Done(Read),
}

/// A server's ErrorResponse: `FATAL 28P01: password authentication failed for user "x"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " hint: {hint}")?;
        }
        Ok(())
    }
}

/// Why the session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The server said so.
    Server(ServerError),
    /// Authentication cannot proceed on our side (no password, a refused method, a server
    /// that failed to prove it knows the password).
    Auth(String),
    /// The bytes are not the protocol we expect.
    Protocol(String),
}

impl WireError {
    /// The server is going away or lost the connection (SQLSTATE classes 57P and 08): a
    /// reused connection that fails like this is worth one retry on a fresh one.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, WireError::Server(e) if e.code.starts_with("57P") || e.code.starts_with("08"))
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Server(e) => e.fmt(f),
            WireError::Auth(m) => f.write_str(m),
            WireError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

/// The cycle in progress: which of its four answers is being read.
#[derive(Debug, Default)]
struct Pipeline {
    /// ReadyForQuery messages seen: 0 begin, 1 registration, 2 routes, 3 commit.
    stage: u8,
    read: Read,
    /// The first error; it explains the rest.
    error: Option<ServerError>,
}

/// The number of ReadyForQuery messages that end a cycle.
const PIPELINE_STAGES: u8 = 4;

/// One connection's protocol state. See the module docs.
pub struct Session {
    phase: Phase,
    out: BytesMut,
    input: BytesMut,
    user: String,
    password: Option<Vec<u8>>,
    cleartext_allowed: bool,
    scram: Option<ScramSha256>,
    pipeline: Pipeline,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session {{ phase: {:?} }}", self.phase)
    }
}

impl Session {
    /// A session whose startup message is already in [`Session::output`]. The password is
    /// sent only as the server's chosen method needs it; in clear text only if
    /// `cleartext_allowed` (the driver allows it over TLS or a local socket).
    pub fn new(startup: &Startup, password: Option<&[u8]>, cleartext_allowed: bool) -> Session {
        let mut out = BytesMut::with_capacity(256);
        let params = [
            ("user", startup.user),
            ("database", startup.database),
            ("application_name", startup.application_name),
            ("client_encoding", "UTF8"),
        ];
        let mut phase = Phase::Starting;
        if frontend::startup_message(params, &mut out).is_err() {
            // Only a NUL in a value can fail; the driver's strings come from a parsed URL.
            phase = Phase::Broken;
        }
        Session {
            phase,
            out,
            input: BytesMut::new(),
            user: startup.user.to_owned(),
            password: password.map(<[u8]>::to_vec),
            cleartext_allowed,
            scram: None,
            pipeline: Pipeline::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Bytes to send.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of [`Session::output`] were sent.
    pub fn sent(&mut self, n: usize) {
        let _ = self.out.split_to(n.min(self.out.len()));
    }

    /// Writes the cycle's pipeline. Only in [`Phase::Idle`].
    pub fn start_cycle(&mut self, cycle: &Cycle) -> Result<(), WireError> {
        if self.phase != Phase::Idle {
            return Err(WireError::Protocol(format!(
                "a cycle cannot start while the session is {:?}",
                self.phase
            )));
        }
        let encode = |out: &mut BytesMut| -> Result<(), std::io::Error> {
            frontend::query(cycle.begin_sql, out)?;
            for (sql, (text, number)) in [
                (cycle.vps_sql, cycle.vps_params),
                (cycle.routes_sql, cycle.routes_params),
            ] {
                frontend::parse("", sql, [TEXT_OID, INT8_OID], out)?;
                let values = [text.to_owned(), number.to_string()];
                frontend::bind(
                    "",
                    "",
                    [0i16], // every parameter in text format
                    values.iter(),
                    |v, buf| {
                        buf.extend_from_slice(v.as_bytes());
                        Ok(IsNull::No)
                    },
                    [0i16], // every result column in text format
                    out,
                )
                .map_err(|_| std::io::Error::other("a parameter could not be encoded"))?;
                frontend::execute("", 0, out)?;
                frontend::sync(out);
            }
            frontend::query("COMMIT", out)
        };
        encode(&mut self.out).map_err(|e| WireError::Protocol(e.to_string()))?;
        self.pipeline = Pipeline::default();
        self.phase = Phase::Reading;
        Ok(())
    }

    /// Queues a Terminate message (a polite goodbye before the driver closes the socket).
    pub fn terminate(&mut self) {
        frontend::terminate(&mut self.out);
    }

    /// Takes bytes from the server and handles every complete message in them.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Progress, WireError> {
        if self.phase == Phase::Broken {
            return Err(WireError::Protocol("the session already failed".into()));
        }
        self.input.extend_from_slice(bytes);
        let result = self.handle_input();
        // A cycle that ended in a server error leaves the session idle and usable (the
        // transaction was rolled back); any other error leaves it broken.
        if result.is_err() && self.phase != Phase::Idle {
            self.phase = Phase::Broken;
        }
        result
    }

    fn handle_input(&mut self) -> Result<Progress, WireError> {
        loop {
            // The length is checked before the body is buffered: a bogus length must not
            // make us wait for (and hold) gigabytes.
            if self.input.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.input[1],
                    self.input[2],
                    self.input[3],
                    self.input[4],
                ]) as usize;
                if len > MAX_MESSAGE_BYTES {
                    return Err(WireError::Protocol(format!(
                        "a server message of {len} bytes (tag {:?}) is over {MAX_MESSAGE_BYTES} \
                         (MAX_MESSAGE_BYTES): is this a PostgreSQL server?",
                        char::from(self.input[0])
                    )));
                }
            }
            let message = match Message::parse(&mut self.input) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(Progress::Pending),
                Err(e) => {
                    return Err(WireError::Protocol(format!(
                        "cannot parse a server message: {e}"
                    )))
                }
            };
            match self.phase {
                Phase::Starting => {
                    if let Some(done) = self.on_startup(message)? {
                        return Ok(done);
                    }
                }
                Phase::Reading => {
                    if let Some(read) = self.on_pipeline(message)? {
                        return Ok(Progress::Done(read));
                    }
                }
                Phase::Idle | Phase::Broken => match message {
                    // Asynchronous messages may come at any time.
                    Message::ParameterStatus(_) | Message::NoticeResponse(_) => {}
                    Message::NotificationResponse(_) => {}
                    Message::ErrorResponse(body) => {
                        // e.g. FATAL 57P01 on a server shutdown, sent to idle sessions.
                        self.phase = Phase::Broken;
                        return Err(WireError::Server(server_error(&body)?));
                    }
                    other => {
                        return Err(WireError::Protocol(format!(
                            "unexpected {} while idle",
                            name(&other)
                        )))
                    }
                },
            }
        }
    }

    /// One message during startup; `Some(Ready)` at its end.
    fn on_startup(&mut self, message: Message) -> Result<Option<Progress>, WireError> {
        match message {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                let password = self.password()?;
                if !self.cleartext_allowed {
                    return Err(WireError::Auth(
                        "the server asks for the password in clear text over an unencrypted \
                         network connection; refused (use sslmode=require or verify-full, or \
                         scram-sha-256 in the server's pg_hba.conf)"
                            .into(),
                    ));
                }
                frontend::password_message(&password, &mut self.out).map_err(protocol)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = self.password()?;
                let hash = md5_hash(self.user.as_bytes(), &password, body.salt());
                frontend::password_message(hash.as_bytes(), &mut self.out).map_err(protocol)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(m) = mechanisms.next().map_err(protocol)? {
                    scram |= m == SCRAM_SHA_256;
                }
                if !scram {
                    return Err(WireError::Auth(
                        "the server offers no SASL mechanism this agent speaks (SCRAM-SHA-256)"
                            .into(),
                    ));
                }
                let password = self.password()?;
                let client = ScramSha256::new(&password, ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut self.out)
                    .map_err(protocol)?;
                self.scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let scram = self.scram.as_mut().ok_or_else(|| {
                    WireError::Protocol("SASL continue without a SASL exchange".into())
                })?;
                scram
                    .update(body.data())
                    .map_err(|e| WireError::Auth(format!("SCRAM exchange failed: {e}")))?;
                frontend::sasl_response(scram.message(), &mut self.out).map_err(protocol)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let mut scram = self.scram.take().ok_or_else(|| {
                    WireError::Protocol("SASL final without a SASL exchange".into())
                })?;
                scram.finish(body.data()).map_err(|e| {
                    WireError::Auth(format!(
                        "the server's SCRAM signature is wrong ({e}): it does not know the \
                         password, so it is not the server it claims to be"
                    ))
                })?;
            }
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => {
                return Err(WireError::Auth(format!(
                    "the server asks for {} authentication, which this agent does not speak \
                     (use scram-sha-256 or md5 for this role in the server's pg_hba.conf)",
                    name(&message)
                )))
            }
            Message::ParameterStatus(_)
            | Message::BackendKeyData(_)
            | Message::NoticeResponse(_)
            | Message::NotificationResponse(_) => {}
            Message::ErrorResponse(body) => {
                return Err(WireError::Server(server_error(&body)?));
            }
            Message::ReadyForQuery(_) => {
                if self.scram.is_some() {
                    return Err(WireError::Auth(
                        "the server ended SCRAM authentication without proving it knows the \
                         password"
                            .into(),
                    ));
                }
                self.phase = Phase::Idle;
                return Ok(Some(Progress::Ready));
            }
            other => {
                return Err(WireError::Protocol(format!(
                    "unexpected {} during startup",
                    name(&other)
                )))
            }
        }
        Ok(None)
    }

    /// One message of the cycle's answers; `Some(read)` when all four parts are in.
    fn on_pipeline(&mut self, message: Message) -> Result<Option<Read>, WireError> {
        let p = &mut self.pipeline;
        match message {
            Message::DataRow(row) => {
                let values = row_values(&row)?;
                match p.stage {
                    1 if p.read.vps_ids.len() < MAX_VPS_ROWS => {
                        p.read.vps_ids.push(values.into_iter().next().flatten())
                    }
                    2 if p.read.routes.len() < MAX_ROUTE_ROWS => p.read.routes.push(values),
                    1 | 2 => {} // over the query's LIMIT: not a well-behaved server; cut
                    _ => {
                        return Err(WireError::Protocol(
                            "a data row outside the registration and routes queries".into(),
                        ))
                    }
                }
            }
            Message::ErrorResponse(body) => {
                let e = server_error(&body)?;
                if p.error.is_none() {
                    p.error = Some(e);
                }
            }
            Message::ReadyForQuery(body) => {
                p.stage += 1;
                if p.stage == PIPELINE_STAGES {
                    // After COMMIT (or the ROLLBACK an error turns it into) we are outside any
                    // transaction; anything else would leave a pooler's server connection held.
                    if body.status() != b'I' {
                        return Err(WireError::Protocol(format!(
                            "the transaction is still open after COMMIT (status {:?})",
                            char::from(body.status())
                        )));
                    }
                    self.phase = Phase::Idle;
                    let done = std::mem::take(p);
                    return match done.error {
                        Some(e) => Err(WireError::Server(e)),
                        None => Ok(Some(done.read)),
                    };
                }
            }
            Message::CommandComplete(_)
            | Message::ParseComplete
            | Message::BindComplete
            | Message::EmptyQueryResponse
            | Message::NoData
            | Message::PortalSuspended
            | Message::RowDescription(_)
            | Message::ParameterStatus(_)
            | Message::NoticeResponse(_)
            | Message::NotificationResponse(_) => {}
            other => {
                return Err(WireError::Protocol(format!(
                    "unexpected {} in the answers",
                    name(&other)
                )))
            }
        }
        Ok(None)
    }

    fn password(&self) -> Result<Vec<u8>, WireError> {
        self.password.clone().ok_or_else(|| {
            WireError::Auth(
                "the server asks for a password and none is given: put it in the URL, in \
                 PGPASSWORD, or in a password file (PGPASSFILE or ~/.pgpass, mode 0600)"
                    .into(),
            )
        })
    }
}

fn protocol(e: std::io::Error) -> WireError {
    WireError::Protocol(e.to_string())
}

/// A data row's values as text (our queries ask for text results).
fn row_values(row: &DataRowBody) -> Result<Vec<Option<String>>, WireError> {
    let buffer = row.buffer();
    let mut ranges = row.ranges();
    let mut values = Vec::new();
    while let Some(range) = ranges.next().map_err(protocol)? {
        values.push(match range {
            None => None,
            Some(r) => {
                let bytes = buffer.get(r).ok_or_else(|| {
                    WireError::Protocol("a data row's field runs past its end".into())
                })?;
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
        });
    }
    Ok(values)
}

fn server_error(body: &ErrorResponseBody) -> Result<ServerError, WireError> {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = body.fields();
    while let Some(field) = fields.next().map_err(protocol)? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    Ok(e)
}

/// A message's name, for errors.
fn name(m: &Message) -> &'static str {
    match m {
        Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => "GSSAPI",
        Message::AuthenticationKerberosV5 => "Kerberos V5",
        Message::AuthenticationScmCredential => "SCM credential",
        Message::AuthenticationSspi => "SSPI",
        Message::CopyInResponse(_) | Message::CopyOutResponse(_) => "a COPY response",
        Message::CopyData(_) | Message::CopyDone => "COPY data",
        Message::DataRow(_) => "a data row",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::ParameterDescription(_) => "a parameter description",
        Message::CloseComplete => "CloseComplete",
        Message::BackendKeyData(_) => "BackendKeyData",
        _ => "a message",
    }
}

#[cfg(test)]
mod tests {
    //! Byte scripts: what a server sends, message by message, built by hand.
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        b.extend_from_slice(extra);
        msg(b'R', &b)
    }
    fn ready(status: u8) -> Vec<u8> {
        msg(b'Z', &[status])
    }
    fn param_status(k: &str, v: &str) -> Vec<u8> {
        msg(b'S', format!("{k}\0{v}\0").as_bytes())
    }
    fn notice() -> Vec<u8> {
        msg(b'N', b"SNOTICE\0C00000\0Mhello\0\0")
    }
    fn error(code: &str, message: &str) -> Vec<u8> {
        msg(b'E', format!("SERROR\0C{code}\0M{message}\0\0").as_bytes())
    }
    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', format!("{tag}\0").as_bytes())
    }
    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        msg(b'D', &b)
    }
    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    const STARTUP: Startup = Startup {
        user: "agent",
        database: "sigma",
        application_name: "test",
    };
    const CYCLE: Cycle = Cycle {
        begin_sql: "BEGIN",
        vps_sql: "SELECT 1",
        vps_params: ("vps-1", 10),
        routes_sql: "SELECT 2",
        routes_params: ("vps-1", 10001),
    };

    fn ready_session() -> Session {
        let mut s = Session::new(&STARTUP, None, false);
        let out = s.output().to_vec();
        s.sent(out.len());
        assert_eq!(
            s.receive(&cat(&[auth(0, &[]), ready(b'I')])),
            Ok(Progress::Ready)
        );
        s
    }

    /// The answers to one cycle, each part given.
    fn answers(vps: &[Vec<u8>], routes: &[Vec<u8>]) -> Vec<u8> {
        let mut v = cat(&[
            complete("BEGIN"),
            complete("SET"),
            ready(b'T'),
            msg(b'1', &[]),
            msg(b'2', &[]),
        ]);
        v.extend(vps.concat());
        v.extend(cat(&[
            complete("SELECT 1"),
            ready(b'T'),
            msg(b'1', &[]),
            msg(b'2', &[]),
        ]));
        v.extend(routes.concat());
        v.extend(cat(&[
            complete("SELECT 1"),
            ready(b'T'),
            complete("COMMIT"),
            ready(b'I'),
        ]));
        v
    }

    #[test]
    fn startup_message_names_user_database_and_application() {
        let s = Session::new(&STARTUP, None, false);
        let out = s.output();
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len());
        assert_eq!(&out[4..8], &196608u32.to_be_bytes()); // protocol 3.0
        let text = String::from_utf8_lossy(&out[8..]);
        for part in [
            "user\0agent\0",
            "database\0sigma\0",
            "application_name\0test\0",
            "client_encoding\0UTF8\0",
        ] {
            assert!(text.contains(part), "{text:?}");
        }
    }

    #[test]
    fn trust_then_a_cycle_byte_by_byte() {
        let mut s = ready_session();
        s.start_cycle(&CYCLE).unwrap();
        let out = s.output().to_vec();
        // Q (begin), P B E S twice, Q (commit): all written before any answer.
        let tags: Vec<u8> = {
            let mut tags = Vec::new();
            let mut i = 0;
            while i < out.len() {
                tags.push(out[i]);
                i += 1 + u32::from_be_bytes([out[i + 1], out[i + 2], out[i + 3], out[i + 4]])
                    as usize;
            }
            tags
        };
        assert_eq!(tags, b"QPBESPBESQ");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("vps-1") && text.contains("10001") && text.contains("COMMIT"));
        s.sent(out.len());
        let script = answers(
            &[row(&[Some("id-1")])],
            &[
                row(&[
                    Some("n"),
                    Some("r"),
                    Some("10001"),
                    Some("127.0.0.1"),
                    Some("22"),
                ]),
                row(&[Some("n"), Some("r2"), Some("10002"), None, Some("22")]),
            ],
        );
        // Fed one byte at a time: nothing is lost at any boundary.
        let (last, head) = script.split_last().unwrap();
        for b in head {
            assert_eq!(s.receive(&[*b]), Ok(Progress::Pending));
        }
        let Ok(Progress::Done(read)) = s.receive(&[*last]) else {
            panic!("not done")
        };
        assert_eq!(read.vps_ids, [Some("id-1".to_owned())]);
        assert_eq!(read.routes.len(), 2);
        assert_eq!(read.routes[1][3], None);
        assert_eq!(s.phase(), Phase::Idle);
        // The connection is reusable.
        s.start_cycle(&CYCLE).unwrap();
    }

    #[test]
    fn notices_and_parameter_status_anywhere() {
        let mut s = Session::new(&STARTUP, None, false);
        let script = cat(&[
            notice(),
            auth(0, &[]),
            param_status("server_version", "15"),
            notice(),
            msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]),
            ready(b'I'),
        ]);
        assert_eq!(s.receive(&script), Ok(Progress::Ready));
        assert_eq!(
            s.receive(&cat(&[notice(), param_status("a", "b")])),
            Ok(Progress::Pending)
        );
        s.start_cycle(&CYCLE).unwrap();
        let mut script = Vec::new();
        for part in answers(&[row(&[Some("id")])], &[]).chunks(1) {
            // A notice and a parameter status between every message boundary would need the
            // boundaries; put them at the front, middle and end instead.
            script.extend_from_slice(part);
        }
        let mid = script.len() / 2;
        // Find a message boundary near the middle.
        let mut i = 0;
        let mut boundary = 0;
        while i < script.len() {
            if i <= mid {
                boundary = i;
            }
            i += 1 + u32::from_be_bytes([
                script[i + 1],
                script[i + 2],
                script[i + 3],
                script[i + 4],
            ]) as usize;
        }
        let mut full = cat(&[notice(), param_status("x", "y")]);
        full.extend_from_slice(&script[..boundary]);
        full.extend(cat(&[notice(), param_status("TimeZone", "UTC")]));
        full.extend_from_slice(&script[boundary..script.len() - 6]);
        full.extend(notice());
        full.extend_from_slice(&script[script.len() - 6..]);
        let Ok(Progress::Done(read)) = s.receive(&full) else {
            panic!("not done")
        };
        assert_eq!(read.vps_ids, [Some("id".to_owned())]);
    }

    #[test]
    fn the_first_error_of_the_pipeline_explains_it() {
        let mut s = ready_session();
        s.start_cycle(&CYCLE).unwrap();
        let script = cat(&[
            complete("BEGIN"),
            ready(b'T'),
            error("57014", "canceling statement due to statement timeout"),
            ready(b'E'),
            error("25P02", "current transaction is aborted"),
            ready(b'E'),
            complete("ROLLBACK"),
            ready(b'I'),
        ]);
        match s.receive(&script) {
            Err(WireError::Server(e)) => {
                assert_eq!(e.code, "57014");
                assert_eq!(
                    e.to_string(),
                    "ERROR 57014: canceling statement due to statement timeout"
                );
            }
            other => panic!("{other:?}"),
        }
        // The transaction was rolled back: the session is idle and takes the next cycle.
        assert_eq!(s.phase(), Phase::Idle);
        s.start_cycle(&CYCLE).unwrap();
    }

    #[test]
    fn a_transaction_left_open_is_a_protocol_error() {
        let mut s = ready_session();
        s.start_cycle(&CYCLE).unwrap();
        let mut script = answers(&[], &[]);
        let n = script.len();
        script[n - 1] = b'T';
        assert!(matches!(s.receive(&script), Err(WireError::Protocol(_))));
        assert_eq!(s.phase(), Phase::Broken);
    }

    #[test]
    fn md5_answers_with_the_salted_hash() {
        let mut s = Session::new(&STARTUP, Some(b"pw"), false);
        let n = s.output().len();
        s.sent(n);
        assert_eq!(s.receive(&auth(5, &[1, 2, 3, 4])), Ok(Progress::Pending));
        let want = md5_hash(b"agent", b"pw", [1, 2, 3, 4]);
        let out = s.output();
        assert_eq!(out[0], b'p');
        assert_eq!(&out[5..out.len() - 1], want.as_bytes());
    }

    #[test]
    fn cleartext_only_when_allowed() {
        let mut s = Session::new(&STARTUP, Some(b"pw"), false);
        match s.receive(&auth(3, &[])) {
            Err(WireError::Auth(m)) => assert!(m.contains("clear text") && !m.contains("pw\0")),
            other => panic!("{other:?}"),
        }
        let mut s = Session::new(&STARTUP, Some(b"pw"), true);
        let n = s.output().len();
        s.sent(n);
        assert_eq!(s.receive(&auth(3, &[])), Ok(Progress::Pending));
        assert_eq!(s.output(), &msg(b'p', b"pw\0")[..]);
    }

    #[test]
    fn no_password_names_where_to_put_it() {
        let mut s = Session::new(&STARTUP, None, true);
        match s.receive(&auth(5, &[0; 4])) {
            Err(WireError::Auth(m)) => assert!(m.contains("PGPASSWORD") && m.contains(".pgpass")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scram_verifies_the_server_signature() {
        let mut s = Session::new(&STARTUP, Some(b"pw"), false);
        let n = s.output().len();
        s.sent(n);
        assert_eq!(
            s.receive(&auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")),
            Ok(Progress::Pending)
        );
        let out = s.output().to_vec();
        assert_eq!(out[0], b'p');
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("SCRAM-SHA-256\0") && text.contains("n,,n=,r="),
            "{text:?}"
        );
        let nonce_at = text.find("r=").unwrap() + 2;
        let client_nonce = text[nonce_at..].to_owned();
        s.sent(out.len());
        // The server's first message with a nonce extending ours; salt and iterations.
        let server_first = format!("r={client_nonce}srv,s=c2FsdA==,i=4096");
        assert_eq!(
            s.receive(&auth(11, server_first.as_bytes())),
            Ok(Progress::Pending)
        );
        assert!(String::from_utf8_lossy(s.output()).contains("c=biws,r="));
        // A server that cannot prove it knows the password.
        match s.receive(&auth(12, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")) {
            Err(WireError::Auth(m)) => assert!(m.contains("SCRAM signature"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scram_must_finish_before_ready() {
        let mut s = Session::new(&STARTUP, Some(b"pw"), false);
        s.receive(&auth(10, b"SCRAM-SHA-256\0\0")).unwrap();
        match s.receive(&cat(&[auth(0, &[]), ready(b'I')])) {
            Err(WireError::Auth(m)) => assert!(m.contains("without proving"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_methods_and_startup_errors_are_named() {
        let mut s = Session::new(&STARTUP, Some(b"pw"), false);
        match s.receive(&auth(7, &[])) {
            Err(WireError::Auth(m)) => assert!(m.contains("GSSAPI") && m.contains("pg_hba")),
            other => panic!("{other:?}"),
        }
        let mut s = Session::new(&STARTUP, Some(b"pw"), false);
        match s.receive(&msg(
            b'E',
            b"SFATAL\0C28P01\0Mpassword authentication failed for user \"agent\"\0\0",
        )) {
            Err(e) => assert_eq!(
                e.to_string(),
                "FATAL 28P01: password authentication failed for user \"agent\""
            ),
            other => panic!("{other:?}"),
        }
        let mut s = Session::new(&STARTUP, None, false);
        assert!(matches!(
            s.receive(&auth(10, b"OAUTHBEARER\0\0")),
            Err(WireError::Auth(_))
        ));
    }

    #[test]
    fn shutdown_while_idle_is_connection_lost() {
        let mut s = ready_session();
        match s.receive(&msg(
            b'E',
            b"SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
        )) {
            Err(e) => assert!(e.is_connection_lost(), "{e:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.phase(), Phase::Broken);
    }

    #[test]
    fn oversized_and_unknown_messages_are_refused_at_once() {
        let mut s = ready_session();
        s.start_cycle(&CYCLE).unwrap();
        let mut huge = vec![b'D'];
        huge.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 5).to_be_bytes());
        match s.receive(&huge) {
            Err(WireError::Protocol(m)) => assert!(m.contains("MAX_MESSAGE_BYTES"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut s = ready_session();
        s.start_cycle(&CYCLE).unwrap();
        assert!(matches!(
            s.receive(&msg(b'!', b"x")),
            Err(WireError::Protocol(_))
        ));
        // Broken stays broken.
        assert!(s.receive(&ready(b'I')).is_err());
    }

    #[test]
    fn rows_past_the_limits_are_cut() {
        let mut s = ready_session();
        s.start_cycle(&CYCLE).unwrap();
        let vps: Vec<Vec<u8>> = (0..MAX_VPS_ROWS + 5).map(|_| row(&[Some("x")])).collect();
        let Ok(Progress::Done(read)) = s.receive(&answers(&vps, &[])) else {
            panic!()
        };
        assert_eq!(read.vps_ids.len(), MAX_VPS_ROWS);
    }

    #[test]
    fn garbage_never_panics() {
        // Every prefix of every script, and random bytes, in every phase.
        let mut seed = 0x1234_5678_u64;
        for round in 0..2000 {
            let mut s = if round % 2 == 0 {
                Session::new(&STARTUP, Some(b"pw"), round % 4 == 0)
            } else {
                let mut s = ready_session();
                s.start_cycle(&CYCLE).unwrap();
                s
            };
            let len = (round % 64) + 1;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            // Valid tags with random bodies make it further than pure noise.
            bytes[0] = b"RSZEDCNK12"[round % 10];
            let _ = s.receive(&bytes);
        }
    }
}
