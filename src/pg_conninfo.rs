//! The database URL, as libpq reads it: `postgres://user:password@host:port/db?key=value` or
//! the key=value form (`host=db user=sigma_agent sslmode=verify-full`), and the libpq password
//! file (`~/.pgpass`). Pure: text in, [`ConnInfo`] or an error out.
//!
//! Why our own: the agent speaks PostgreSQL through the sans-IO `postgres-protocol` crate,
//! which parses no connection strings; libpq's grammar is small. We take the keys this agent
//! uses and refuse every other with its name, as libpq refuses an unknown option.
//!
//! Secrets: no error here ever contains any part of the user name, the password or (for the
//! URL form, where a stray `@` in a password spills into it) the host. Errors name the key or
//! the part of the URL instead, and say how to fix it.
//!
//! Limits: one host (no multi-host failover), one port; keys not in [`KEYS`] are refused.

use std::fmt;
use std::net::IpAddr;

use crate::dns;
use crate::pg_tls::{SslMode, TlsSettings};

/// The port when the URL names none, as libpq.
pub const DEFAULT_PORT: u16 = 5432;
/// Shown in `pg_stat_activity` and PgBouncer's `SHOW CLIENTS` unless the URL sets one.
pub const APPLICATION_NAME: &str = "sigma-agent-lite";
/// Longest password file read: a few hundred lines; a bigger file is a mistake.
pub const MAX_PGPASS_BYTES: u64 = 64 * 1024;

/// The keys understood, in both forms. `connect_timeout` is accepted for libpq compatibility
/// and otherwise ignored: the agent's own bounds (`pg_conn::CONNECT_TIMEOUT`) apply.
pub const KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "application_name",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
];

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A host name or IP literal (`addr` from `hostaddr=`, or the literal itself).
    Tcp {
        host: String,
        addr: Option<IpAddr>,
        port: u16,
    },
    /// A unix-socket directory, as libpq: the socket is `DIR/.s.PGSQL.PORT`.
    Unix { dir: String, port: u16 },
}

/// A parsed connection string. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub target: Target,
    pub application_name: String,
    pub tls: TlsSettings,
    /// `passfile=`: the password file to use instead of `PGPASSFILE`/`~/.pgpass`.
    pub passfile: Option<String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ConnInfo {{ {}, password: {} }}",
            self.describe(),
            if self.password.is_some() {
                "<hidden>"
            } else {
                "none"
            }
        )
    }
}

impl ConnInfo {
    /// `user@host:port/db`, safe to log.
    pub fn describe(&self) -> String {
        let (user, db) = (&self.user, &self.dbname);
        match &self.target {
            Target::Tcp { host, port, .. } if host.contains(':') => {
                format!("{user}@[{host}]:{port}/{db}")
            }
            Target::Tcp { host, port, .. } => format!("{user}@{host}:{port}/{db}"),
            Target::Unix { dir, port } => format!("{user}@{dir}:{port}/{db}"),
        }
    }

    /// The port, whatever the target.
    pub fn port(&self) -> u16 {
        match self.target {
            Target::Tcp { port, .. } | Target::Unix { port, .. } => port,
        }
    }
}

/// The values as given, before defaults and checks.
#[derive(Default)]
struct Raw {
    host: Option<String>,
    hostaddr: Option<String>,
    port: Option<String>,
    dbname: Option<String>,
    user: Option<String>,
    password: Option<String>,
    passfile: Option<String>,
    application_name: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    /// The URL form: host and port are not echoed in errors (a stray `@` in a password ends
    /// up in them).
    from_url: bool,
}

impl Raw {
    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        let slot = match key {
            "host" => &mut self.host,
            "hostaddr" => &mut self.hostaddr,
            "port" => &mut self.port,
            "dbname" => &mut self.dbname,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "passfile" => &mut self.passfile,
            "application_name" => &mut self.application_name,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "connect_timeout" => return Ok(()),
            other => {
                return Err(format!(
                    "parameter '{}' is not supported by this agent (it understands {})",
                    other.escape_debug(),
                    KEYS.join(", ")
                ))
            }
        };
        // As libpq, the last value of a key wins.
        *slot = Some(value);
        Ok(())
    }
}

/// Parses either form. `pgpassword` (the caller reads `PGPASSWORD`) is used when the string
/// has no password. Errors carry no secret (see the module docs).
pub fn parse(s: &str, pgpassword: Option<&str>) -> Result<ConnInfo, String> {
    let mut raw = Raw::default();
    match ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
    {
        Some(rest) => {
            raw.from_url = true;
            parse_url(rest, &mut raw)?
        }
        None => parse_key_values(s, &mut raw)?,
    }
    if raw.password.is_none() {
        raw.password = pgpassword.filter(|p| !p.is_empty()).map(str::to_owned);
    }
    finish(raw)
}

fn finish(raw: Raw) -> Result<ConnInfo, String> {
    let user = raw
        .user
        .filter(|u| !u.is_empty())
        .ok_or("no user is given (e.g. postgres://sigma_agent@10.0.0.5/sigma)")?;
    let port = match raw.port.as_deref() {
        None | Some("") => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ if p.contains(',') => {
                return Err("several ports are given; this agent connects to one".into())
            }
            _ if raw.from_url => {
                return Err(
                    "the port is not a number from 1 to 65535 (a ':' or '/' in the \
                            password must be written %3A or %2F)"
                        .into(),
                )
            }
            _ => {
                return Err(format!(
                    "port '{}' is not a number from 1 to 65535",
                    p.escape_debug()
                ))
            }
        },
    };
    let addr = match raw.hostaddr.as_deref() {
        None | Some("") => None,
        Some(a) if a.contains(',') => {
            return Err("several hosts are given; this agent connects to one".into())
        }
        Some(a) => Some(
            a.parse::<IpAddr>()
                .map_err(|_| format!("hostaddr '{}' is not an IP address", a.escape_debug()))?,
        ),
    };
    let target = match raw.host.filter(|h| !h.is_empty()) {
        Some(h) if h.contains(',') => {
            return Err("several hosts are given; this agent connects to one".into())
        }
        Some(h) if h.starts_with('/') => Target::Unix { dir: h, port },
        Some(h) => {
            let bare = h
                .strip_prefix('[')
                .and_then(|b| b.strip_suffix(']'))
                .unwrap_or(&h)
                .to_owned();
            let literal = bare.parse::<IpAddr>().ok();
            if literal.is_none() && !is_host_name(&bare) {
                return Err(if raw.from_url {
                    "the host is not a valid host name or IP address (an '@' in the user name \
                     or password must be written %40, a '/' as %2F)"
                        .into()
                } else {
                    format!(
                        "host '{}' is not a valid host name, IP address or socket directory",
                        bare.escape_debug()
                    )
                });
            }
            Target::Tcp {
                host: bare,
                addr: addr.or(literal),
                port,
            }
        }
        None => match addr {
            Some(ip) => Target::Tcp {
                host: ip.to_string(),
                addr: Some(ip),
                port,
            },
            None => {
                return Err(
                    "no host is given (e.g. postgres://sigma_agent@10.0.0.5:5432/sigma)".into(),
                )
            }
        },
    };
    let mode = match raw.sslmode.as_deref() {
        None => SslMode::Prefer,
        Some(m) => SslMode::parse(m)?,
    };
    if raw.sslrootcert.as_deref() == Some("") {
        return Err("sslrootcert is empty (give a PEM file, or system)".into());
    }
    Ok(ConnInfo {
        dbname: raw.dbname.filter(|d| !d.is_empty()).unwrap_or(user.clone()),
        user,
        password: raw.password,
        target,
        application_name: raw
            .application_name
            .unwrap_or_else(|| APPLICATION_NAME.to_owned()),
        tls: TlsSettings {
            mode,
            rootcert: raw.sslrootcert,
        },
        passfile: raw.passfile,
    })
}

/// A host name as DNS and /etc/hosts know them: letters, digits, `-`, `_` and dots, within
/// DNS's lengths. Anything else (an `@`, a `:`, a space) is a typo, never sent to a name server.
fn is_host_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && dns::validate_name(name).is_ok()
}

/// `user:password@host:port/dbname?key=value&...` (after the scheme). As libpq, the
/// credentials end at the first `@` before any `/`; everything is percent-decoded.
fn parse_url(rest: &str, raw: &mut Raw) -> Result<(), String> {
    let creds_end = rest
        .find(['@', '/'])
        .filter(|&i| rest.as_bytes()[i] == b'@');
    let (creds, rest) = match creds_end {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if let Some(creds) = creds {
        let (user, password) = match creds.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (creds, None),
        };
        raw.user = Some(decode(user, "the user name")?);
        if let Some(p) = password {
            raw.password = Some(decode(p, "the password")?);
        }
    }
    let (hostport, dbname) = match rest.split_once('/') {
        Some((h, d)) => (h, Some(d)),
        None => (rest, None),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or("an IPv6 host has no closing ']'")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("unexpected text after the IPv6 host's ']'".into()),
        };
        (inside.to_owned(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (decode(h, "the host")?, Some(p)),
            None => (decode(hostport, "the host")?, None),
        }
    };
    if !host.is_empty() {
        raw.host = Some(host);
    }
    if let Some(p) = port {
        raw.port = Some(p.to_owned());
    }
    if let Some(d) = dbname.filter(|d| !d.is_empty()) {
        raw.dbname = Some(decode(d, "the database name")?);
    }
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| format!("parameter '{}' has no '=value'", param.escape_debug()))?;
        let key = decode(key, "a parameter name")?;
        let value = decode(value, "a parameter value")?;
        raw.set(&key, value)?;
    }
    Ok(())
}

/// `%XX` escapes → bytes → UTF-8. The error names `what`, never the text.
fn decode(s: &str, what: &str) -> Result<String, String> {
    let bad = || format!("{what} has a malformed %-escape or is not UTF-8");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// libpq's key=value grammar: `key = value` pairs separated by whitespace; a value is
/// `'quoted'` or a run of non-whitespace, `\` escaping the next character in both.
fn parse_key_values(s: &str, raw: &mut Raw) -> Result<(), String> {
    let mut it = s.chars().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::Chars>| {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        if it.peek().is_none() {
            return Ok(());
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        skip_ws(&mut it);
        if key.is_empty() || it.next_if(|c| *c == '=').is_none() {
            return Err(format!(
                "expected key=value pairs (e.g. host=db user=sigma_agent dbname=sigma), found \
                 '{}' without '='",
                key.escape_debug()
            ));
        }
        skip_ws(&mut it);
        let mut value = String::new();
        let quoted = it.next_if(|c| *c == '\'').is_some();
        let mut closed = !quoted;
        while let Some(&c) = it.peek() {
            if quoted && c == '\'' {
                it.next();
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                break;
            }
            it.next();
            if c == '\\' {
                if let Some(escaped) = it.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        if !closed {
            return Err(format!(
                "the value of '{}' has no closing quote",
                key.escape_debug()
            ));
        }
        raw.set(&key, value)?;
    }
}

/// The password for this connection from a libpq password file's text: the first line
/// `host:port:dbname:user:password` that matches, `*` matching anything, `\:` and `\\`
/// escaped, `#` comments. A unix-socket target matches the host `localhost`, as libpq.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    let want = [host, port.as_str(), dbname, user];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        if want.iter().zip(&fields).all(|(w, f)| f == "*" || f == w) {
            return fields.pop();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ConnInfo {
        parse(s, None).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_form() {
        let c = ok("postgres://sigma_agent:s3cret@10.0.0.5:6432/sigma?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x");
        assert_eq!(c.describe(), "sigma_agent@10.0.0.5:6432/sigma");
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.rootcert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(c.application_name, "x");
        assert_eq!(
            c.target,
            Target::Tcp {
                host: "10.0.0.5".into(),
                addr: Some("10.0.0.5".parse().unwrap()),
                port: 6432
            }
        );
        let c = ok("postgresql://a@[::1]/d");
        assert_eq!(c.describe(), "a@[::1]:5432/d");
        let c = ok("postgres://a:p%40ss@db.example/d");
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.application_name, APPLICATION_NAME);
        // A '?' in the password is part of the credentials.
        let c = ok("postgres://a:p?w@h?sslmode=disable&sslmode=verify-ca");
        assert_eq!(c.password.as_deref(), Some("p?w"));
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
        let c = ok("postgres://a@%2Frun%2Fpostgresql:5433/d");
        assert_eq!(c.describe(), "a@/run/postgresql:5433/d");
        // The database defaults to the user, as libpq.
        assert_eq!(ok("postgres://a@h").dbname, "a");
        assert_eq!(ok("postgres://a@h/d?connect_timeout=3").dbname, "d");
    }

    #[test]
    fn key_value_form() {
        let c = ok("host=::1 user=a dbname=d password='x y\\'z' sslmode='verify-full'");
        assert_eq!(c.describe(), "a@[::1]:5432/d");
        assert_eq!(c.password.as_deref(), Some("x y'z"));
        let c = ok("host=/run/postgresql port=5433 user=a");
        assert_eq!(c.describe(), "a@/run/postgresql:5433/a");
        let c = ok("hostaddr=127.0.0.1 host=db user=a");
        assert_eq!(
            c.target,
            Target::Tcp {
                host: "db".into(),
                addr: Some("127.0.0.1".parse().unwrap()),
                port: 5432
            }
        );
        let c = ok("host = h  user =a sslrootcert=a\\ b");
        assert_eq!(c.tls.rootcert.as_deref(), Some("a b"));
    }

    #[test]
    fn password_from_the_environment_only_when_the_string_has_none() {
        assert_eq!(
            parse("host=h user=a", Some("env"))
                .unwrap()
                .password
                .as_deref(),
            Some("env")
        );
        assert_eq!(
            parse("postgres://a:url@h/d", Some("env"))
                .unwrap()
                .password
                .as_deref(),
            Some("url")
        );
        assert_eq!(parse("host=h user=a", Some("")).unwrap().password, None);
    }

    #[test]
    fn errors_name_the_fix_and_no_secret() {
        for (s, want) in [
            ("postgres://h/d", "no user"),
            ("postgres://a@/d", "no host"),
            ("postgres://a@h1,h2/d", "several hosts"),
            ("postgres://a:pw@h/d?sslmode=verify", "sslmode 'verify'"),
            ("postgres://a:pw@h/d?sslmode=allow", "sslmode=allow"),
            ("postgres://a:pw@h:notaport/d", "port"),
            ("postgres://a:pw@h/d%ff", "database name"),
            ("postgres://u:pa@ss@db/x", "%40"),
            (
                "postgres://u:secretpw@h/d?options=-c%20x",
                "'options' is not supported",
            ),
            (
                "postgres://u:secretpw@h/d?sslrootcert=",
                "sslrootcert is empty",
            ),
            ("nonsense = = =", "'nonsense' is not supported"),
            ("host=h user", "without '='"),
            ("host='h sslmode=require", "closing quote"),
            ("host=h user=a port=0", "port '0'"),
            ("host=bad/host user=a", "not a valid host"),
        ] {
            let e = match parse(s, None) {
                Ok(c) => panic!("{s} accepted: {c:?}"),
                Err(e) => e,
            };
            assert!(e.contains(want), "{s}: {e}");
            for secret in ["pw", "ss@db", "secretpw"] {
                assert!(!e.contains(secret), "{s}: {e}");
            }
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = ok("postgres://a:hunter22@h/d");
        assert!(!format!("{c:?}").contains("hunter22"));
    }

    #[test]
    fn pgpass_lines_match_as_libpq() {
        let text = "# comment\n\
                    other:5432:*:a:wrong\n\
                    db\\:x:*:sigma:a:p\\:w\\\\1\n\
                    *:5433:*:*:any\n\
                    localhost:5432:d:a:sock\n\
                    short:line\n";
        assert_eq!(
            pgpass_lookup(text, "db:x", 1, "sigma", "a").as_deref(),
            Some("p:w\\1")
        );
        assert_eq!(
            pgpass_lookup(text, "h", 5433, "x", "y").as_deref(),
            Some("any")
        );
        assert_eq!(
            pgpass_lookup(text, "localhost", 5432, "d", "a").as_deref(),
            Some("sock")
        );
        assert_eq!(pgpass_lookup(text, "h", 5432, "d", "a"), None);
    }
}
