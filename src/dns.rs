//! Non-blocking DNS stub resolver for the single-threaded mio loop.
//!
//! # Why
//! The agent probes backends given as `host:port`, where `host` is usually a
//! DNS name. It runs one mio loop on one thread with no async runtime, so a
//! blocking `getaddrinfo(3)` (seconds when a server is slow or silent) would
//! freeze every probe and the metrics endpoint. Like nginx and HAProxy, the
//! agent therefore resolves names itself: queries go out over non-blocking
//! sockets that the caller's loop polls, and the caller bounds each lookup
//! with its own deadline.
//!
//! # What
//! * Pure parts (no I/O, no clock; time is passed in as `now`):
//!   [`build_query`], [`parse_response`], [`parse_resolv_conf`],
//!   [`parse_hosts`], [`candidates`] and the TTL [`Cache`].
//! * A [`Resolver`] holding configuration, `/etc/hosts` and the cache, and a
//!   [`Lookup`] state machine per name that owns its socket and is driven by
//!   the caller's loop (`register`, `on_ready`, `next_deadline`,
//!   `on_timeout`, `deregister`).
//!
//! Lookup order: IP literal, then `/etc/hosts` (name as given), then the
//! cache, then the network. On the network, for each search candidate in
//! glibc order, an `A` query is sent first and an `AAAA` query only if the
//! name has no `A` record (NODATA): IPv4 is preferred, the result is
//! deterministic, and dual-stack names cost one round trip. The first
//! address of the answer is returned. Each try uses a fresh UDP socket on an
//! OS-chosen ephemeral port and a random query id; replies from another
//! address, with another id or another question are dropped and the lookup
//! keeps waiting. A reply with TC=1 is retried over TCP to the same server.
//! Tries rotate over the servers, `attempts` rounds of `timeout` each.
//!
//! # resolv.conf support
//! Supported: `nameserver` (IPv4/IPv6, port 53, at most [`MAX_NAMESERVERS`]
//! as glibc), `search` and `domain` (the last one wins, as glibc),
//! `options ndots:N timeout:N attempts:N` (clamped as glibc). With no
//! `nameserver` line, 127.0.0.1:53 is used, as glibc does. Comments start
//! with `#` or `;`. Malformed lines yield warnings and are skipped.
//! Not supported (ignored): other options (`rotate`, `edns0`, `use-vc`,
//! `single-request`, `inet6`, ...), `sortlist`, IPv6 scope ids
//! (`fe80::1%eth0`), the `LOCALDOMAIN`/`RES_OPTIONS` environment variables,
//! the hostname's domain as implicit search list, and `nsswitch.conf` (the
//! order is always hosts file, then DNS).
//!
//! # Limits
//! Every limit is a `pub const` below with its reason. Other known limits:
//! no EDNS0 (UDP replies are at most 512 bytes, larger ones come back with
//! TC=1 and go over TCP), no DNSSEC, CNAME targets missing from the answer
//! section are not chased (reported as "no address"), SERVFAIL from the
//! only server is final (with several servers the next one is tried), and
//! with a single `--dns-server` the per-try timeout is [`OVERRIDE_TIMEOUT`].
//! Reading `/etc/hosts` and `/etc/resolv.conf` is a plain (blocking) local
//! file read, bounded in size; it happens at start and in
//! [`Resolver::reload_if_changed`].
//!
//! Nothing here panics on any input: packets and files are untrusted.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

/// DNS server port; resolv.conf has no syntax for another one.
pub const DNS_PORT: u16 = 53;
/// Size of the fixed DNS header (RFC 1035 4.1.1).
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form, length bytes and final zero included (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 2.3.4); the two top bits of a length byte mark pointers.
pub const MAX_LABEL_LEN: usize = 63;
/// Most compression pointers followed while reading one name. A legal name has
/// at most 127 labels and a sane encoder emits one pointer per name, so 127 is
/// generous; it bounds the work a hostile packet can cause.
pub const MAX_POINTER_HOPS: usize = 127;
/// Longest CNAME chain followed inside one answer. Real chains are 1-3 long
/// (CDNs); the bound stops loops such as `a CNAME b`, `b CNAME a`.
pub const MAX_CNAME_CHAIN: usize = 16;
/// Most addresses kept from one answer: the agent uses only the first one and
/// this bounds the memory of each cache entry.
pub const MAX_ADDRS_PER_ANSWER: usize = 16;
/// Most `nameserver` lines used, as glibc (`MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains used, as glibc's historical `MAXDNSRCH`; each one costs
/// up to two queries per lookup of a short name.
pub const MAX_SEARCH_DOMAINS: usize = 6;
/// Largest `ndots`, as glibc (`RES_MAXNDOTS`).
pub const MAX_NDOTS: usize = 15;
/// Largest per-try `timeout`, as glibc (`RES_MAXRETRANS`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `attempts`, as glibc (`RES_MAXRETRY`).
pub const MAX_ATTEMPTS: u32 = 5;
/// glibc default `ndots`.
pub const DEFAULT_NDOTS: usize = 1;
/// glibc default per-try timeout (`RES_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// glibc default number of rounds over the servers (`RES_DFLRETRY`).
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// Per-try timeout with `--dns-server`: the probe deadline is 3 s, so a lost
/// datagram is retransmitted once within it instead of never (glibc's 5 s).
pub const OVERRIDE_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest time a positive answer is cached: a TTL of 0 or 1 would otherwise
/// mean one query per probe.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time a positive answer is cached, so that backends that move are
/// followed within minutes even if their TTL is a day.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// How long NXDOMAIN, SERVFAIL and "no address" are cached: short, so a name
/// that appears is picked up quickly, yet a broken name is not queried on
/// every probe.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most cache entries; beyond it the entry expiring soonest is evicted. The
/// agent probes a few hundred backends; at about 220 bytes per entry (measured
/// by `cache_memory_for_1000_names`) this bounds the cache near 1 MiB.
pub const MAX_CACHE_ENTRIES: usize = 4096;
/// UDP receive buffer. Without EDNS0 servers send at most 512 bytes; the
/// larger buffer tolerates servers that send more anyway.
pub const UDP_RECV_BUF: usize = 4096;
/// Most datagrams read per readiness event, so a flood of junk on the lookup's
/// port cannot starve the loop; the rest wait for the next event or try.
pub const MAX_DATAGRAMS_PER_EVENT: usize = 64;
/// Largest DNS message over TCP: the length prefix is 16 bits.
pub const MAX_TCP_MESSAGE: usize = 65535;
/// Largest resolv.conf read; real ones are a few hundred bytes.
pub const MAX_RESOLV_CONF_BYTES: u64 = 64 * 1024;
/// Largest hosts file read; ad-blocking hosts files reach a few MiB.
pub const MAX_HOSTS_BYTES: u64 = 8 * 1024 * 1024;

const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const RCODE_SERVFAIL: u16 = 2;
const RCODE_NXDOMAIN: u16 = 3;

/// Query type; also the address family of a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    A,
    Aaaa,
}

impl QType {
    /// The RR type code on the wire.
    pub fn code(self) -> u16 {
        match self {
            QType::A => 1,
            QType::Aaaa => 28,
        }
    }
}

/// Why a lookup gave no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    NxDomain,
    ServFail,
    Timeout,
    NoAddress,
    Error(String),
}

impl DnsFailure {
    /// Short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            DnsFailure::NxDomain => "nxdomain",
            DnsFailure::ServFail => "servfail",
            DnsFailure::Timeout => "timeout",
            DnsFailure::NoAddress => "no address",
            DnsFailure::Error(_) => "error",
        }
    }
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsFailure::Error(msg) => write!(f, "error: {msg}"),
            other => f.write_str(other.as_str()),
        }
    }
}

// ---------------------------------------------------------------------------
// Names and queries
// ---------------------------------------------------------------------------

/// Why a name cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    EmptyLabel,
    LabelTooLong,
    NameTooLong,
    BadChar,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            NameError::Empty => "empty name",
            NameError::EmptyLabel => "empty label",
            NameError::LabelTooLong => "label longer than 63",
            NameError::NameTooLong => "name longer than 255",
            NameError::BadChar => "character not allowed in a name",
        };
        f.write_str(text)
    }
}

/// Appends `name` (dotted, optional trailing dot) in wire form.
fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), NameError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    let mut wire_len = 1; // the final zero
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
        if !label.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
            return Err(NameError::BadChar);
        }
        wire_len += label.len() + 1;
        if wire_len > MAX_NAME_LEN {
            return Err(NameError::NameTooLong);
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Checks that `name` can be queried (labels <= 63, total <= 255, printable ASCII).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    encode_name(name, &mut Vec::with_capacity(MAX_NAME_LEN))
}

/// Lower case, without trailing dot: the form used for comparisons and cache keys.
pub fn normalize_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.strip_suffix('.') {
        Some(stripped) => stripped.to_string(),
        None => lower,
    }
}

/// Builds a recursive (RD=1) query for `name`, class IN.
pub fn build_query(id: u16, name: &str, qtype: QType) -> Result<Vec<u8>, NameError> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // qd=1, an=ns=ar=0
    encode_name(name, &mut out)?;
    out.extend_from_slice(&qtype.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

// ---------------------------------------------------------------------------
// Response parsing
// ---------------------------------------------------------------------------

/// What the server said about the question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// NOERROR; `addrs` empty means NODATA ("no address").
    NoError,
    NxDomain,
    ServFail,
    /// TC=1: retry over TCP.
    Truncated,
}

/// A validated response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: Status,
    /// Addresses of the requested type for the name at the end of the CNAME chain.
    pub addrs: Vec<IpAddr>,
    /// Minimum TTL over the CNAMEs and addresses used; 0 when `addrs` is empty.
    pub ttl: u32,
}

/// Why a packet was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header.
    TooShort,
    WrongId,
    /// QR bit clear: a query, not a response.
    NotResponse,
    BadOpcode,
    /// Question count other than 1.
    BadQuestionCount,
    /// The question is not ours (name, type, class) or cannot be read.
    QuestionMismatch,
    /// The packet ends in the middle of a record or name.
    UnexpectedEnd,
    /// A length byte of 64..=191: a label longer than 63 or a reserved label type.
    BadLabel,
    NameTooLong,
    /// A compression pointer into the header or past the end.
    PointerOutOfRange,
    /// A compression pointer that does not point strictly backwards (loop).
    BadPointer,
    /// RDLENGTH runs past the end of the packet, or a name past its RDATA.
    RdataOverrun,
    /// An A/AAAA RDATA of the wrong length.
    BadRdata,
    CnameChainTooLong,
    /// An RCODE other than NOERROR, SERVFAIL and NXDOMAIN.
    Rcode(u8),
}

impl ParseError {
    /// True if the packet is not a reply to our query at all (to be dropped
    /// while waiting for the real one), false if it is a broken reply.
    pub fn is_foreign(self) -> bool {
        matches!(
            self,
            ParseError::TooShort
                | ParseError::WrongId
                | ParseError::NotResponse
                | ParseError::BadOpcode
                | ParseError::BadQuestionCount
                | ParseError::QuestionMismatch
        )
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Rcode(code) => write!(f, "rcode {code}"),
            other => write!(f, "{other:?}"),
        }
    }
}

fn read_u16(packet: &[u8], pos: usize) -> Result<u16, ParseError> {
    match packet.get(pos..pos.saturating_add(2)) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(ParseError::UnexpectedEnd),
    }
}

fn read_u32(packet: &[u8], pos: usize) -> Result<u32, ParseError> {
    match packet.get(pos..pos.saturating_add(4)) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(ParseError::UnexpectedEnd),
    }
}

/// Reads a possibly compressed name at `start`. Returns it lower-cased and
/// dotted (bytes that are not printable ASCII as `\DDD`) and the position
/// after it. Every pointer must point strictly before the segment it was
/// found in, which rules out loops.
fn read_name(packet: &[u8], start: usize) -> Result<(String, usize), ParseError> {
    let mut name = String::new();
    let mut pos = start;
    let mut segment_start = start;
    let mut after_first_pointer: Option<usize> = None;
    let mut wire_len = 0usize;
    let mut hops = 0usize;
    loop {
        let len = *packet.get(pos).ok_or(ParseError::UnexpectedEnd)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => {
                wire_len += 1;
                if wire_len > MAX_NAME_LEN {
                    return Err(ParseError::NameTooLong);
                }
                return Ok((name, after_first_pointer.unwrap_or(pos + 1)));
            }
            0x00 => {
                wire_len += len + 1;
                if wire_len >= MAX_NAME_LEN {
                    return Err(ParseError::NameTooLong);
                }
                let label = packet
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(ParseError::UnexpectedEnd)?;
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                        name.push(b.to_ascii_lowercase() as char);
                    } else {
                        name.push_str(&format!("\\{b:03}"));
                    }
                }
                pos += 1 + len;
            }
            0xC0 => {
                let low = *packet.get(pos + 1).ok_or(ParseError::UnexpectedEnd)? as usize;
                let target = ((len & 0x3F) << 8) | low;
                if target < HEADER_LEN || target >= packet.len() {
                    return Err(ParseError::PointerOutOfRange);
                }
                if target >= segment_start {
                    return Err(ParseError::BadPointer);
                }
                hops += 1;
                if hops > MAX_POINTER_HOPS {
                    return Err(ParseError::BadPointer);
                }
                if after_first_pointer.is_none() {
                    after_first_pointer = Some(pos + 2);
                }
                pos = target;
                segment_start = target;
            }
            _ => return Err(ParseError::BadLabel),
        }
    }
}

/// One answer-section record, names already decoded.
struct Record {
    owner: String,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata_start: usize,
    rdata_end: usize,
}

/// Validates `packet` as the reply to (`expect_id`, `expect_name`,
/// `expect_type`) and extracts the addresses. See [`Answer`] and [`ParseError`].
pub fn parse_response(
    packet: &[u8],
    expect_id: u16,
    expect_name: &str,
    expect_type: QType,
) -> Result<Answer, ParseError> {
    if packet.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    if read_u16(packet, 0)? != expect_id {
        return Err(ParseError::WrongId);
    }
    let flags = read_u16(packet, 2)?;
    if flags & FLAG_QR == 0 {
        return Err(ParseError::NotResponse);
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(ParseError::BadOpcode);
    }
    if read_u16(packet, 4)? != 1 {
        return Err(ParseError::BadQuestionCount);
    }
    let answer_count = read_u16(packet, 6)?;

    let (qname, pos) = read_name(packet, HEADER_LEN).map_err(|_| ParseError::QuestionMismatch)?;
    let qtype = read_u16(packet, pos).map_err(|_| ParseError::QuestionMismatch)?;
    let qclass = read_u16(packet, pos + 2).map_err(|_| ParseError::QuestionMismatch)?;
    let wanted = normalize_name(expect_name);
    if qname != wanted || qtype != expect_type.code() || qclass != CLASS_IN {
        return Err(ParseError::QuestionMismatch);
    }
    let mut pos = pos + 4;

    let empty = |status| Answer {
        status,
        addrs: Vec::new(),
        ttl: 0,
    };
    if flags & FLAG_TC != 0 {
        return Ok(empty(Status::Truncated));
    }
    match flags & 0xF {
        0 => {}
        RCODE_SERVFAIL => return Ok(empty(Status::ServFail)),
        RCODE_NXDOMAIN => return Ok(empty(Status::NxDomain)),
        other => return Err(ParseError::Rcode(other as u8)),
    }

    let mut records = Vec::with_capacity(usize::from(answer_count).min(16));
    for _ in 0..answer_count {
        let (owner, after) = read_name(packet, pos)?;
        let rtype = read_u16(packet, after)?;
        let class = read_u16(packet, after + 2)?;
        let ttl = read_u32(packet, after + 4)?;
        let rdlen = read_u16(packet, after + 8)? as usize;
        let rdata_start = after + 10;
        let rdata_end = rdata_start + rdlen;
        if rdata_end > packet.len() {
            return Err(ParseError::RdataOverrun);
        }
        // RFC 2181 8: a TTL with the top bit set is treated as zero.
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        records.push(Record {
            owner,
            rtype,
            class,
            ttl,
            rdata_start,
            rdata_end,
        });
        pos = rdata_end;
    }

    let mut current = wanted;
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    let mut hops = 0usize;
    loop {
        let mut cname: Option<&Record> = None;
        for rr in records
            .iter()
            .filter(|rr| rr.class == CLASS_IN && rr.owner == current)
        {
            if rr.rtype == expect_type.code() {
                let rdata = packet
                    .get(rr.rdata_start..rr.rdata_end)
                    .ok_or(ParseError::RdataOverrun)?;
                let addr = match (expect_type, rdata.len()) {
                    (QType::A, 4) => {
                        IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))
                    }
                    (QType::Aaaa, 16) => {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(rdata);
                        IpAddr::V6(Ipv6Addr::from(octets))
                    }
                    _ => return Err(ParseError::BadRdata),
                };
                if addrs.len() < MAX_ADDRS_PER_ANSWER {
                    addrs.push(addr);
                }
                ttl = ttl.min(rr.ttl);
            } else if rr.rtype == TYPE_CNAME && cname.is_none() {
                cname = Some(rr);
            }
        }
        if !addrs.is_empty() {
            break;
        }
        let Some(rr) = cname else { break };
        hops += 1;
        if hops > MAX_CNAME_CHAIN {
            return Err(ParseError::CnameChainTooLong);
        }
        let (target, end) = read_name(packet, rr.rdata_start)?;
        if end > rr.rdata_end {
            return Err(ParseError::RdataOverrun);
        }
        ttl = ttl.min(rr.ttl);
        current = target;
    }
    if addrs.is_empty() {
        ttl = 0;
    }
    Ok(Answer {
        status: Status::NoError,
        addrs,
        ttl,
    })
}

// ---------------------------------------------------------------------------
// resolv.conf, hosts, search list
// ---------------------------------------------------------------------------

/// The supported subset of resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    /// Lower case, no trailing dot.
    pub search: Vec<String>,
    pub ndots: usize,
    /// Per-try timeout.
    pub timeout: Duration,
    /// Rounds over the servers.
    pub attempts: u32,
}

impl Default for ResolvConf {
    /// glibc defaults: 127.0.0.1:53, no search list, ndots 1, timeout 5 s, attempts 2.
    fn default() -> Self {
        ResolvConf {
            nameservers: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT)],
            search: Vec::new(),
            ndots: DEFAULT_NDOTS,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

fn strip_comment(line: &str) -> &str {
    match line.find(['#', ';']) {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Parses resolv.conf text. Never fails: malformed lines are skipped with a
/// warning naming the line number.
pub fn parse_resolv_conf(text: &str) -> (ResolvConf, Vec<String>) {
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        ..ResolvConf::default()
    };
    let mut warnings = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let mut words = strip_comment(raw).split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword {
            "nameserver" => match words.next() {
                None => warnings.push(format!("line {line_no}: nameserver without address")),
                Some(text) => match text.parse::<IpAddr>() {
                    Err(_) => {
                        warnings.push(format!("line {line_no}: bad nameserver address {text:?}"))
                    }
                    Ok(_) if conf.nameservers.len() >= MAX_NAMESERVERS => warnings.push(format!(
                        "line {line_no}: more than {MAX_NAMESERVERS} nameservers, ignored"
                    )),
                    Ok(ip) => conf.nameservers.push(SocketAddr::new(ip, DNS_PORT)),
                },
            },
            "domain" | "search" => {
                let mut list = Vec::new();
                for domain in words {
                    if domain == "." {
                        continue;
                    }
                    if let Err(e) = validate_name(domain) {
                        warnings.push(format!("line {line_no}: bad domain {domain:?}: {e}"));
                    } else if list.len() >= MAX_SEARCH_DOMAINS {
                        warnings.push(format!(
                            "line {line_no}: more than {MAX_SEARCH_DOMAINS} search domains, {domain:?} ignored"
                        ));
                    } else {
                        list.push(normalize_name(domain));
                    }
                    if keyword == "domain" {
                        break;
                    }
                }
                if list.is_empty() {
                    warnings.push(format!("line {line_no}: {keyword} without a usable domain"));
                }
                conf.search = list;
            }
            "options" => {
                for option in words {
                    if let Err(msg) = apply_option(&mut conf, option) {
                        warnings.push(format!("line {line_no}: {msg}"));
                    }
                }
            }
            "sortlist" => {
                log::debug!("resolv.conf line {line_no}: sortlist not supported, ignored")
            }
            other => warnings.push(format!("line {line_no}: unknown keyword {other:?}")),
        }
    }
    if conf.nameservers.is_empty() {
        conf.nameservers = ResolvConf::default().nameservers;
    }
    (conf, warnings)
}

fn apply_option(conf: &mut ResolvConf, option: &str) -> Result<(), String> {
    let (name, value) = match option.split_once(':') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    let number = || -> Result<u64, String> {
        match value.map(str::parse::<u64>) {
            Some(Ok(n)) => Ok(n),
            _ => Err(format!("bad option {option:?}")),
        }
    };
    match name {
        "ndots" => conf.ndots = (number()?.min(MAX_NDOTS as u64)) as usize,
        "timeout" => {
            conf.timeout = Duration::from_secs(number()?.clamp(1, MAX_TIMEOUT.as_secs()));
        }
        "attempts" => conf.attempts = number()?.clamp(1, u64::from(MAX_ATTEMPTS)) as u32,
        other => log::debug!("resolv.conf option {other:?} not supported, ignored"),
    }
    Ok(())
}

/// Parsed hosts file: name (lower case) to addresses in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    names: HashMap<String, Vec<IpAddr>>,
}

impl Hosts {
    /// All addresses for `name` (case-insensitive, trailing dot ignored).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(&normalize_name(name)).map(Vec::as_slice)
    }

    /// The address to use: the first IPv4 one, else the first IPv6 one.
    pub fn first(&self, name: &str) -> Option<IpAddr> {
        let addrs = self.lookup(name)?;
        addrs
            .iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Parses hosts-file text (`ADDR NAME [ALIAS...]`, `#` comments). Lines with a
/// bad address (including IPv6 scope ids) are skipped.
pub fn parse_hosts(text: &str) -> Hosts {
    let mut hosts = Hosts::default();
    for (index, raw) in text.lines().enumerate() {
        let line = match raw.find('#') {
            Some(i) => &raw[..i],
            None => raw,
        };
        let mut words = line.split_whitespace();
        let Some(addr_text) = words.next() else {
            continue;
        };
        let Ok(addr) = addr_text.parse::<IpAddr>() else {
            log::debug!("hosts line {}: bad address {addr_text:?}", index + 1);
            continue;
        };
        for name in words {
            let list = hosts.names.entry(normalize_name(name)).or_default();
            if !list.contains(&addr) {
                list.push(addr);
            }
        }
    }
    hosts
}

/// Names to query for `name`, in order, as glibc's `res_nsearch`: a trailing
/// dot means only the name itself; with at least `ndots` dots the name itself
/// comes first, then the search domains; otherwise the search domains first
/// and the name itself last. Lower case, no trailing dot; candidates too long
/// to query are left out.
pub fn candidates(name: &str, conf: &ResolvConf) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut push = |candidate: String| {
        if validate_name(&candidate).is_ok() {
            out.push(candidate);
        }
    };
    if let Some(absolute) = lower.strip_suffix('.') {
        push(absolute.to_string());
        return out;
    }
    let as_is_first = lower.matches('.').count() >= conf.ndots;
    if as_is_first {
        push(lower.clone());
    }
    for domain in &conf.search {
        push(format!("{lower}.{domain}"));
    }
    if !as_is_first {
        push(lower);
    }
    out
}

// ---------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct CacheEntry {
    result: Result<Vec<IpAddr>, DnsFailure>,
    expires: Instant,
    inserted: Instant,
}

/// Answers by (name, family) with their expiry.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<(String, QType), CacheEntry>,
}

fn later(now: Instant, delta: Duration) -> Instant {
    now.checked_add(delta).unwrap_or(now)
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How long a positive answer with this TTL is kept: clamped to [MIN_TTL, MAX_TTL].
    pub fn positive_lifetime(ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).clamp(MIN_TTL, MAX_TTL)
    }

    /// The cached result, if any and not expired (expired entries are removed).
    pub fn get(
        &mut self,
        name: &str,
        family: QType,
        now: Instant,
    ) -> Option<Result<Vec<IpAddr>, DnsFailure>> {
        let key = (normalize_name(name), family);
        let entry = self.entries.get(&key)?;
        if now >= entry.expires {
            self.entries.remove(&key);
            return None;
        }
        Some(entry.result.clone())
    }

    /// Stores a result. Addresses are kept for their `ttl` clamped to
    /// [MIN_TTL, MAX_TTL]; NXDOMAIN, SERVFAIL and no address (also `Ok` with no
    /// address) for NEGATIVE_TTL; timeouts and errors are not stored. When
    /// full, the entry expiring soonest (then the oldest) is evicted.
    pub fn insert(
        &mut self,
        name: &str,
        family: QType,
        result: Result<Vec<IpAddr>, DnsFailure>,
        ttl: u32,
        now: Instant,
    ) {
        let (result, lifetime) = match result {
            Ok(addrs) if addrs.is_empty() => (Err(DnsFailure::NoAddress), NEGATIVE_TTL),
            Ok(addrs) => (Ok(addrs), Cache::positive_lifetime(ttl)),
            Err(DnsFailure::Timeout) | Err(DnsFailure::Error(_)) => return,
            Err(negative) => (Err(negative), NEGATIVE_TTL),
        };
        let key = (normalize_name(name), family);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_CACHE_ENTRIES {
            self.evict_one();
        }
        let entry = CacheEntry {
            result,
            expires: later(now, lifetime),
            inserted: now,
        };
        self.entries.insert(key, entry);
    }

    fn evict_one(&mut self) {
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| (entry.expires, entry.inserted))
            .map(|(key, _)| key.clone());
        if let Some(key) = victim {
            self.entries.remove(&key);
        }
    }

    /// Estimated heap bytes: the hash table (capacity times slot size plus a
    /// control byte) plus each entry's name and address list.
    pub fn approx_memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<((String, QType), CacheEntry)>() + 1;
        let table = self.entries.capacity() * slot;
        let heap: usize = self
            .entries
            .iter()
            .map(|((name, _), entry)| {
                let result = match &entry.result {
                    Ok(addrs) => addrs.capacity() * std::mem::size_of::<IpAddr>(),
                    Err(DnsFailure::Error(msg)) => msg.capacity(),
                    Err(_) => 0,
                };
                name.capacity() + result
            })
            .sum();
        table + heap
    }
}

// ---------------------------------------------------------------------------
// Resolver
// ---------------------------------------------------------------------------

/// Where the resolver gets its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// `None`: servers, search list and options from `resolv_conf_path`.
    /// `Some` (`--dns-server`): only this server, no search list, ndots 1,
    /// timeout [`OVERRIDE_TIMEOUT`], attempts 2; resolv.conf is not read.
    pub server: Option<SocketAddr>,
    pub resolv_conf_path: PathBuf,
    /// Consulted in both modes.
    pub hosts_path: PathBuf,
}

impl ResolverConfig {
    /// `/etc/resolv.conf` and `/etc/hosts`.
    pub fn system() -> ResolverConfig {
        ResolverConfig {
            server: None,
            resolv_conf_path: PathBuf::from("/etc/resolv.conf"),
            hosts_path: PathBuf::from("/etc/hosts"),
        }
    }

    /// The `--dns-server ADDR:PORT` mode; `/etc/hosts` is still consulted.
    pub fn with_server(server: SocketAddr) -> ResolverConfig {
        ResolverConfig {
            server: Some(server),
            ..ResolverConfig::system()
        }
    }
}

/// Cheap PRNG (splitmix64) for query ids (and the database source's backoff jitter),
/// seeded from /dev/urandom.
#[derive(Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn from_urandom() -> Rng {
        let mut seed = [0u8; 8];
        let read = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        let state = match read {
            Ok(()) => u64::from_ne_bytes(seed),
            Err(e) => {
                log::warn!("dns: cannot read /dev/urandom ({e}); query ids seeded from the clock");
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                nanos ^ (u64::from(std::process::id()) << 32)
            }
        };
        Rng { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_id(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
}

/// Size and modification time of a file; `None` if it cannot be stat'ed.
type FileStamp = Option<(Option<SystemTime>, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

fn read_limited(path: &Path, limit: u64) -> io::Result<String> {
    let mut bytes = Vec::new();
    File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Configuration, hosts and cache shared by all lookups.
#[derive(Debug)]
pub struct Resolver {
    config: ResolverConfig,
    conf: ResolvConf,
    hosts: Hosts,
    cache: Cache,
    rng: Rng,
    resolv_stamp: FileStamp,
    hosts_stamp: FileStamp,
    warnings: Vec<String>,
    /// Every address of the last answer `start_walk` gave at once, for `start_all`.
    last_answer: Vec<IpAddr>,
}

/// What [`Resolver::start`] gives.
#[derive(Debug)]
pub enum Start {
    /// Answered without waiting: IP literal, hosts file, cache, or a failure
    /// known at once (bad name, no socket).
    Done(Result<IpAddr, DnsFailure>),
    /// A query is in flight: register the lookup and drive it.
    Pending(Box<Lookup>),
}

impl Resolver {
    /// Reads the files named by `config`. Never fails: a missing or malformed
    /// file gives defaults and warnings (logged, and see [`Resolver::warnings`]).
    pub fn new(config: ResolverConfig) -> Resolver {
        let conf = match config.server {
            Some(server) => ResolvConf {
                nameservers: vec![server],
                timeout: OVERRIDE_TIMEOUT,
                ..ResolvConf::default()
            },
            None => ResolvConf::default(),
        };
        let mut resolver = Resolver {
            config,
            conf,
            hosts: Hosts::default(),
            cache: Cache::new(),
            rng: Rng::from_urandom(),
            resolv_stamp: None,
            hosts_stamp: None,
            warnings: Vec::new(),
            last_answer: Vec::new(),
        };
        resolver.load_hosts();
        if resolver.config.server.is_none() {
            resolver.load_resolv_conf();
        }
        resolver
    }

    fn load_hosts(&mut self) {
        self.hosts_stamp = stamp(&self.config.hosts_path);
        match read_limited(&self.config.hosts_path, MAX_HOSTS_BYTES) {
            Ok(text) => self.hosts = parse_hosts(&text),
            Err(e) => {
                let msg = format!("{}: {e}", self.config.hosts_path.display());
                log::warn!("dns: {msg}");
                self.warnings.push(msg);
                self.hosts = Hosts::default();
            }
        }
    }

    fn load_resolv_conf(&mut self) {
        let path = self.config.resolv_conf_path.clone();
        self.resolv_stamp = stamp(&path);
        let (conf, warnings) = match read_limited(&path, MAX_RESOLV_CONF_BYTES) {
            Ok(text) => parse_resolv_conf(&text),
            Err(e) => (ResolvConf::default(), vec![format!("cannot read: {e}")]),
        };
        for warning in warnings {
            let msg = format!("{}: {warning}", path.display());
            log::warn!("dns: {msg}");
            self.warnings.push(msg);
        }
        self.conf = conf;
        self.cache.clear();
    }

    /// Re-reads the hosts file and (in system mode) resolv.conf if their
    /// size or mtime changed; a new resolv.conf also empties the cache.
    /// Returns true if anything was re-read. Call it now and then (e.g. once
    /// per probe round): it costs one or two `stat` calls.
    pub fn reload_if_changed(&mut self) -> bool {
        let mut changed = false;
        if stamp(&self.config.hosts_path) != self.hosts_stamp {
            log::info!("dns: re-reading {}", self.config.hosts_path.display());
            self.warnings.clear();
            self.load_hosts();
            changed = true;
        }
        if self.config.server.is_none() && stamp(&self.config.resolv_conf_path) != self.resolv_stamp
        {
            log::info!("dns: re-reading {}", self.config.resolv_conf_path.display());
            self.load_resolv_conf();
            changed = true;
        }
        changed
    }

    /// Warnings from reading the files.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The effective resolv.conf (servers, search list, options).
    pub fn resolv_conf(&self) -> &ResolvConf {
        &self.conf
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn cache_mut(&mut self) -> &mut Cache {
        &mut self.cache
    }

    /// Starts resolving `name`: IP literal, hosts file, cache, then network.
    pub fn start(&mut self, name: &str, now: Instant) -> Start {
        self.start_all(name, now).0
    }

    /// As [`Resolver::start`], and when the answer is known at once, every address of it
    /// (at most [`MAX_ADDRS_PER_ANSWER`], in answer order; the first is the one `start`
    /// gives). For a pending lookup, [`Lookup::addresses`] gives them once it ends. This is
    /// what a strict_dns route needs: Envoy balances across every address of the answer.
    pub fn start_all(&mut self, name: &str, now: Instant) -> (Start, Vec<IpAddr>) {
        let name = name.trim();
        if let Ok(ip) = name.parse::<IpAddr>() {
            return (Start::Done(Ok(ip)), vec![ip]);
        }
        if let Some(ip) = self.hosts.first(name) {
            // As a lookup prefers A records: the IPv4 addresses when there are any.
            let all: Vec<IpAddr> = self
                .hosts
                .lookup(name)
                .unwrap_or_default()
                .iter()
                .filter(|a| a.is_ipv4() == ip.is_ipv4())
                .take(MAX_ADDRS_PER_ANSWER)
                .copied()
                .collect();
            log::debug!("dns: {name} -> {ip} from hosts file");
            return (Start::Done(Ok(ip)), all);
        }
        let start = self.start_walk(name, now);
        let all = match &start {
            Start::Done(Ok(_)) => std::mem::take(&mut self.last_answer),
            _ => Vec::new(),
        };
        (start, all)
    }

    fn start_walk(&mut self, name: &str, now: Instant) -> Start {
        if let Err(e) = validate_name(name) {
            return Start::Done(Err(DnsFailure::Error(format!(
                "invalid name {name:?}: {e}"
            ))));
        }
        let mut walk = Walk {
            candidates: candidates(name, &self.conf),
            index: 0,
            qtype: QType::A,
            nodata: false,
            servfail: false,
            answer: Vec::new(),
        };
        if let Some(done) = self.walk_cache(&mut walk, now) {
            log::debug!("dns: {name} from cache: {done:?}");
            self.last_answer = std::mem::take(&mut walk.answer);
            return Start::Done(done);
        }
        Lookup::begin(self, walk, now)
    }

    /// Advances `walk` over cached results; `None` means the current
    /// position needs a network query.
    fn walk_cache(&mut self, walk: &mut Walk, now: Instant) -> Option<Result<IpAddr, DnsFailure>> {
        loop {
            let Some((name, qtype)) = walk.current() else {
                return Some(Err(walk.final_failure()));
            };
            let cached = self.cache.get(name, qtype, now)?;
            if let Some(done) = walk.apply(cached) {
                return Some(done);
            }
        }
    }
}

/// Position in the (candidate, A then AAAA) sequence and what was seen.
#[derive(Debug)]
struct Walk {
    candidates: Vec<String>,
    index: usize,
    qtype: QType,
    /// Some candidate exists but had no address of the type asked.
    nodata: bool,
    servfail: bool,
    /// Every address of the answer that ended the walk (the first is the result).
    answer: Vec<IpAddr>,
}

impl Walk {
    fn current(&self) -> Option<(&str, QType)> {
        self.candidates
            .get(self.index)
            .map(|name| (name.as_str(), self.qtype))
    }

    /// Applies the result for the current position; `Some` ends the lookup.
    /// As glibc: NXDOMAIN, NODATA and SERVFAIL go on to the next candidate,
    /// a timeout or error ends the search.
    fn apply(
        &mut self,
        result: Result<Vec<IpAddr>, DnsFailure>,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        match result {
            Ok(addrs) => match addrs.first() {
                Some(ip) => {
                    let ip = *ip;
                    self.answer = addrs;
                    return Some(Ok(ip));
                }
                None => self.no_address(),
            },
            Err(DnsFailure::NoAddress) => self.no_address(),
            Err(DnsFailure::NxDomain) => self.next_candidate(),
            Err(DnsFailure::ServFail) => {
                self.servfail = true;
                self.next_candidate();
            }
            Err(other) => return Some(Err(other)),
        }
        if self.index >= self.candidates.len() {
            return Some(Err(self.final_failure()));
        }
        None
    }

    fn no_address(&mut self) {
        self.nodata = true;
        match self.qtype {
            QType::A => self.qtype = QType::Aaaa,
            QType::Aaaa => self.next_candidate(),
        }
    }

    fn next_candidate(&mut self) {
        self.index += 1;
        self.qtype = QType::A;
    }

    fn final_failure(&self) -> DnsFailure {
        if self.nodata {
            DnsFailure::NoAddress
        } else if self.servfail {
            DnsFailure::ServFail
        } else {
            DnsFailure::NxDomain
        }
    }
}

/// The socket of the current try.
#[derive(Debug)]
enum Io {
    Idle,
    Udp {
        socket: UdpSocket,
        server: SocketAddr,
    },
    Tcp {
        stream: TcpStream,
        out: Vec<u8>,
        written: usize,
        inbuf: Vec<u8>,
    },
}

/// What reading the socket gave.
enum Step {
    Wait,
    Reply(Answer),
    FailTry(DnsFailure),
}

/// One name being resolved. Owns the socket of its current try; the caller
/// registers it with one token and calls `on_ready` on events for that token
/// and `on_timeout` once `next_deadline` has passed. Dropping it abandons
/// the lookup (this is how the caller's overall deadline is applied).
#[derive(Debug)]
pub struct Lookup {
    walk: Walk,
    servers: Vec<SocketAddr>,
    try_timeout: Duration,
    tries_total: usize,
    try_index: usize,
    last_failure: DnsFailure,
    id: u16,
    server: SocketAddr,
    io: Io,
    deadline: Instant,
    token: Option<Token>,
}

impl Lookup {
    fn begin(res: &mut Resolver, walk: Walk, now: Instant) -> Start {
        let servers = res.conf.nameservers.clone();
        let tries_total = servers.len().max(1) * res.conf.attempts.max(1) as usize;
        let server = servers
            .first()
            .copied()
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT));
        let mut lookup = Lookup {
            walk,
            servers,
            try_timeout: res.conf.timeout,
            tries_total,
            try_index: 0,
            last_failure: DnsFailure::Timeout,
            id: 0,
            server,
            io: Io::Idle,
            deadline: now,
            token: None,
        };
        match lookup.start_query(res, None, now) {
            Some(done) => {
                res.last_answer = std::mem::take(&mut lookup.walk.answer);
                Start::Done(done)
            }
            None => Start::Pending(Box::new(lookup)),
        }
    }

    /// Every address of the answer, once `on_ready`/`on_timeout` returned `Some(Ok(ip))`
    /// (`ip` is the first); empty before that or after a failure.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.walk.answer
    }

    /// The name being queried now (a search candidate), for logs.
    pub fn current_name(&self) -> &str {
        self.walk.current().map(|(name, _)| name).unwrap_or("")
    }

    /// Registers the current socket; later sockets (retries, TCP) are
    /// registered with the same token by `on_ready` / `on_timeout`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.token = Some(token);
        register_io(&mut self.io, registry, token)
    }

    /// Deregisters the current socket (dropping the lookup also closes it).
    pub fn deregister(&mut self, registry: &Registry) {
        deregister_io(&mut self.io, registry);
        self.token = None;
    }

    /// When `on_timeout` must be called (retransmission or next server).
    pub fn next_deadline(&self) -> Instant {
        self.deadline
    }

    /// Reads the socket; `Some` is the final result of the lookup.
    pub fn on_ready(
        &mut self,
        res: &mut Resolver,
        registry: &Registry,
        now: Instant,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        let (qname, qtype) = match self.walk.current() {
            Some((name, qtype)) => (name.to_string(), qtype),
            None => return None,
        };
        let step = match &mut self.io {
            Io::Idle => Step::Wait,
            Io::Udp { socket, server } => udp_step(socket, *server, self.id, &qname, qtype),
            Io::Tcp {
                stream,
                out,
                written,
                inbuf,
            } => tcp_step(stream, out, written, inbuf, self.id, &qname, qtype),
        };
        match step {
            Step::Wait => None,
            Step::FailTry(failure) => self.fail_try(res, Some(registry), now, failure),
            Step::Reply(answer) => self.on_answer(res, registry, now, answer),
        }
    }

    /// Handles the try deadline; `Some` is the final result of the lookup.
    pub fn on_timeout(
        &mut self,
        res: &mut Resolver,
        registry: &Registry,
        now: Instant,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        if now < self.deadline || matches!(self.io, Io::Idle) {
            return None;
        }
        log::debug!(
            "dns: {} try {} timed out",
            self.current_name(),
            self.try_index + 1
        );
        self.fail_try(res, Some(registry), now, DnsFailure::Timeout)
    }

    fn on_answer(
        &mut self,
        res: &mut Resolver,
        registry: &Registry,
        now: Instant,
        answer: Answer,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        match answer.status {
            Status::NoError => {
                self.finish_query(res, Some(registry), now, Ok(answer.addrs), answer.ttl)
            }
            Status::NxDomain => {
                self.finish_query(res, Some(registry), now, Err(DnsFailure::NxDomain), 0)
            }
            Status::ServFail if self.servers.len() > 1 => {
                self.fail_try(res, Some(registry), now, DnsFailure::ServFail)
            }
            Status::ServFail => {
                self.finish_query(res, Some(registry), now, Err(DnsFailure::ServFail), 0)
            }
            Status::Truncated if matches!(self.io, Io::Udp { .. }) => {
                log::debug!(
                    "dns: {} truncated over UDP, retrying over TCP",
                    self.current_name()
                );
                match self.open_tcp(registry, now) {
                    Ok(()) => None,
                    Err(e) => self.fail_try(
                        res,
                        Some(registry),
                        now,
                        DnsFailure::Error(format!("tcp: {e}")),
                    ),
                }
            }
            Status::Truncated => {
                let failure = DnsFailure::Error("truncated reply over TCP".to_string());
                self.fail_try(res, Some(registry), now, failure)
            }
        }
    }

    /// Starts the query for the walk's current position.
    fn start_query(
        &mut self,
        res: &mut Resolver,
        registry: Option<&Registry>,
        now: Instant,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        self.try_index = 0;
        self.last_failure = DnsFailure::Timeout;
        self.open_try(res, registry, now)
    }

    /// Sends the current try over UDP, skipping tries whose socket fails.
    fn open_try(
        &mut self,
        res: &mut Resolver,
        registry: Option<&Registry>,
        now: Instant,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        loop {
            if self.try_index >= self.tries_total {
                let failure = self.last_failure.clone();
                return self.finish_query(res, registry, now, Err(failure), 0);
            }
            let Some((qname, qtype)) = self.walk.current() else {
                return Some(Err(self.walk.final_failure()));
            };
            let server = match self.servers.get(self.try_index % self.servers.len().max(1)) {
                Some(server) => *server,
                None => self.server,
            };
            let id = res.rng.next_id();
            let sent = build_query(id, qname, qtype)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
                .and_then(|packet| open_udp(server, &packet));
            log::debug!(
                "dns: query {qname} {qtype:?} id {id} to {server} (try {})",
                self.try_index + 1
            );
            match sent.and_then(|socket| self.replace_io(Io::Udp { socket, server }, registry)) {
                Ok(()) => {
                    self.id = id;
                    self.server = server;
                    self.deadline = later(now, self.try_timeout);
                    return None;
                }
                Err(e) => {
                    log::debug!("dns: udp to {server}: {e}");
                    self.last_failure = DnsFailure::Error(format!("udp {server}: {e}"));
                    self.try_index += 1;
                }
            }
        }
    }

    fn fail_try(
        &mut self,
        res: &mut Resolver,
        registry: Option<&Registry>,
        now: Instant,
        failure: DnsFailure,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        log::debug!(
            "dns: {} try {} failed: {failure}",
            self.current_name(),
            self.try_index + 1
        );
        self.last_failure = failure;
        self.try_index += 1;
        self.open_try(res, registry, now)
    }

    /// Caches the result of the current query and moves the walk on.
    fn finish_query(
        &mut self,
        res: &mut Resolver,
        registry: Option<&Registry>,
        now: Instant,
        result: Result<Vec<IpAddr>, DnsFailure>,
        ttl: u32,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        if let Some((name, qtype)) = self.walk.current() {
            log::debug!("dns: {name} {qtype:?}: {result:?} ttl {ttl}");
            res.cache.insert(name, qtype, result.clone(), ttl, now);
        }
        if let Some(registry) = registry {
            deregister_io(&mut self.io, registry);
        }
        self.io = Io::Idle;
        if let Some(done) = self.walk.apply(result) {
            return Some(done);
        }
        if let Some(done) = res.walk_cache(&mut self.walk, now) {
            return Some(done);
        }
        self.start_query(res, registry, now)
    }

    fn open_tcp(&mut self, registry: &Registry, now: Instant) -> io::Result<()> {
        let (qname, qtype) = self
            .walk
            .current()
            .ok_or_else(|| io::Error::other("no current name"))?;
        let packet = build_query(self.id, qname, qtype)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut out = Vec::with_capacity(packet.len() + 2);
        out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        out.extend_from_slice(&packet);
        let stream = TcpStream::connect(self.server)?;
        let io = Io::Tcp {
            stream,
            out,
            written: 0,
            inbuf: Vec::new(),
        };
        self.replace_io(io, Some(registry))?;
        self.deadline = later(now, self.try_timeout);
        Ok(())
    }

    fn replace_io(&mut self, io: Io, registry: Option<&Registry>) -> io::Result<()> {
        if let Some(registry) = registry {
            deregister_io(&mut self.io, registry);
        }
        self.io = io;
        match (registry, self.token) {
            (Some(registry), Some(token)) => register_io(&mut self.io, registry, token),
            _ => Ok(()),
        }
    }
}

fn register_io(io: &mut Io, registry: &Registry, token: Token) -> io::Result<()> {
    match io {
        Io::Idle => Ok(()),
        Io::Udp { socket, .. } => registry.register(socket, token, Interest::READABLE),
        Io::Tcp { stream, .. } => {
            registry.register(stream, token, Interest::READABLE | Interest::WRITABLE)
        }
    }
}

fn deregister_io(io: &mut Io, registry: &Registry) {
    let result = match io {
        Io::Idle => Ok(()),
        Io::Udp { socket, .. } => registry.deregister(socket),
        Io::Tcp { stream, .. } => registry.deregister(stream),
    };
    if let Err(e) = result {
        log::debug!("dns: deregister: {e}");
    }
}

/// A fresh UDP socket on an OS-chosen port, connected to `server`, with the query sent.
fn open_udp(server: SocketAddr, packet: &[u8]) -> io::Result<UdpSocket> {
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    let sent = socket.send(packet)?;
    if sent != packet.len() {
        return Err(io::Error::other("short send"));
    }
    Ok(socket)
}

fn udp_step(socket: &UdpSocket, server: SocketAddr, id: u16, qname: &str, qtype: QType) -> Step {
    let mut buf = [0u8; UDP_RECV_BUF];
    for _ in 0..MAX_DATAGRAMS_PER_EVENT {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                if from != server {
                    log::debug!("dns: dropped datagram from {from}, expected {server}");
                    continue;
                }
                match parse_response(&buf[..len], id, qname, qtype) {
                    Ok(answer) => return Step::Reply(answer),
                    Err(e) if e.is_foreign() => {
                        log::debug!("dns: dropped reply from {server}: {e}")
                    }
                    Err(e) => {
                        return Step::FailTry(DnsFailure::Error(format!(
                            "bad reply from {server}: {e}"
                        )))
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Step::FailTry(DnsFailure::Error(format!("udp {server}: {e}"))),
        }
    }
    Step::Wait
}

fn tcp_step(
    stream: &mut TcpStream,
    out: &[u8],
    written: &mut usize,
    inbuf: &mut Vec<u8>,
    id: u16,
    qname: &str,
    qtype: QType,
) -> Step {
    let pending = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
        )
    };
    match stream.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return Step::FailTry(DnsFailure::Error(format!("tcp: {e}"))),
    }
    while *written < out.len() {
        match stream.write(&out[*written..]) {
            Ok(0) => return Step::FailTry(DnsFailure::Error("tcp: write returned 0".to_string())),
            Ok(n) => *written += n,
            Err(e) if pending(&e) => return Step::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Step::FailTry(DnsFailure::Error(format!("tcp: {e}"))),
        }
    }
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Step::FailTry(DnsFailure::Error("tcp: closed before reply".to_string()))
            }
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if pending(&e) => return Step::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Step::FailTry(DnsFailure::Error(format!("tcp: {e}"))),
        }
        let Some(&[hi, lo]) = inbuf.get(..2) else {
            continue;
        };
        let need = 2 + usize::from(u16::from_be_bytes([hi, lo]));
        if let Some(message) = inbuf.get(2..need) {
            return match parse_response(message, id, qname, qtype) {
                Ok(answer) => Step::Reply(answer),
                Err(e) => Step::FailTry(DnsFailure::Error(format!("bad tcp reply: {e}"))),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // -- packet building helpers (independent of the code under test) ------

    fn wire_name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [id, flags, qd, an, 0, 0] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out
    }

    fn question(out: &mut Vec<u8>, name: &str, qtype: u16) {
        out.extend_from_slice(&wire_name(name));
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
    }

    fn record(out: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        out.extend_from_slice(owner);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }

    const PTR_QNAME: [u8; 2] = [0xC0, 12];
    const RESPONSE: u16 = 0x8180; // QR, RD, RA

    /// Response to `www.example.com` A with two addresses (TTL 300 and 60).
    fn a_response(id: u16) -> Vec<u8> {
        let mut p = header(id, RESPONSE, 1, 2);
        question(&mut p, "www.example.com", 1);
        record(&mut p, &PTR_QNAME, 1, 300, &[192, 0, 2, 1]);
        record(&mut p, &PTR_QNAME, 1, 60, &[192, 0, 2, 2]);
        p
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    // -- queries ------------------------------------------------------------

    #[test]
    fn query_bytes() {
        let q = build_query(0x1234, "www.Example.com", QType::A).unwrap();
        let mut expected = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x03www\x07Example\x03com\x00");
        expected.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(q, expected);

        let q = build_query(7, "a.b.", QType::Aaaa).unwrap();
        let mut expected = vec![0, 7, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x01a\x01b\x00");
        expected.extend_from_slice(&[0, 28, 0, 1]);
        assert_eq!(q, expected);
    }

    #[test]
    fn query_name_validation() {
        let label63 = "a".repeat(63);
        assert!(build_query(1, &label63, QType::A).is_ok());
        assert_eq!(
            build_query(1, &"a".repeat(64), QType::A),
            Err(NameError::LabelTooLong)
        );
        assert_eq!(build_query(1, "", QType::A), Err(NameError::Empty));
        assert_eq!(build_query(1, ".", QType::A), Err(NameError::Empty));
        assert_eq!(build_query(1, "a..b", QType::A), Err(NameError::EmptyLabel));
        assert_eq!(build_query(1, "a b", QType::A), Err(NameError::BadChar));
        assert_eq!(build_query(1, "é.com", QType::A), Err(NameError::BadChar));
        // 4 labels of 63 = 4*64 + 1 = 257 bytes; 3 labels of 63 + one of 61 = 255.
        let too_long = [label63.as_str(); 4].join(".");
        assert_eq!(
            build_query(1, &too_long, QType::A),
            Err(NameError::NameTooLong)
        );
        let max = format!("{0}.{0}.{0}.{1}", label63, "b".repeat(61));
        assert!(build_query(1, &max, QType::A).is_ok());
        let over = format!("{0}.{0}.{0}.{1}", label63, "b".repeat(62));
        assert_eq!(build_query(1, &over, QType::A), Err(NameError::NameTooLong));
    }

    // -- responses ----------------------------------------------------------

    #[test]
    fn parse_a() {
        let answer = parse_response(&a_response(9), 9, "WWW.example.com.", QType::A).unwrap();
        assert_eq!(answer.status, Status::NoError);
        assert_eq!(answer.addrs, vec![v4(192, 0, 2, 1), v4(192, 0, 2, 2)]);
        assert_eq!(answer.ttl, 60);
    }

    #[test]
    fn parse_aaaa() {
        let mut p = header(5, RESPONSE, 1, 1);
        question(&mut p, "v6.example", 28);
        let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        record(&mut p, &PTR_QNAME, 28, 120, &ip.octets());
        let answer = parse_response(&p, 5, "v6.example", QType::Aaaa).unwrap();
        assert_eq!(answer.addrs, vec![IpAddr::V6(ip)]);
        assert_eq!(answer.ttl, 120);
    }

    #[test]
    fn parse_cname_chain() {
        // www.example.com CNAME a.example.net (ttl 30), a.example.net CNAME b.cdn (ttl 600),
        // b.cdn A 198.51.100.7 (ttl 100); records deliberately out of order, plus noise.
        let mut p = header(1, RESPONSE, 1, 4);
        question(&mut p, "www.example.com", 1);
        record(&mut p, &wire_name("b.cdn"), 1, 100, &[198, 51, 100, 7]);
        record(&mut p, &wire_name("other.name"), 1, 1, &[10, 0, 0, 1]);
        record(&mut p, &PTR_QNAME, 5, 30, &wire_name("a.example.net"));
        record(
            &mut p,
            &wire_name("a.example.net"),
            5,
            600,
            &wire_name("B.CDN"),
        );
        let answer = parse_response(&p, 1, "www.example.com", QType::A).unwrap();
        assert_eq!(answer.addrs, vec![v4(198, 51, 100, 7)]);
        assert_eq!(answer.ttl, 30);
    }

    #[test]
    fn parse_cname_loop_is_bounded() {
        let mut p = header(1, RESPONSE, 1, 2);
        question(&mut p, "a.x", 1);
        record(&mut p, &wire_name("a.x"), 5, 30, &wire_name("b.x"));
        record(&mut p, &wire_name("b.x"), 5, 30, &wire_name("a.x"));
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::CnameChainTooLong)
        );
    }

    #[test]
    fn parse_cname_without_target_address_is_nodata() {
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        record(&mut p, &PTR_QNAME, 5, 30, &wire_name("elsewhere.y"));
        let answer = parse_response(&p, 1, "a.x", QType::A).unwrap();
        assert_eq!(answer.status, Status::NoError);
        assert!(answer.addrs.is_empty());
    }

    #[test]
    fn parse_rcodes() {
        for (rcode, status) in [(3u16, Status::NxDomain), (2, Status::ServFail)] {
            let mut p = header(2, RESPONSE | rcode, 1, 0);
            question(&mut p, "gone.example", 1);
            let answer = parse_response(&p, 2, "gone.example", QType::A).unwrap();
            assert_eq!(answer.status, status);
            assert!(answer.addrs.is_empty());
        }
        let mut p = header(2, RESPONSE | 5, 1, 0);
        question(&mut p, "refused.example", 1);
        assert_eq!(
            parse_response(&p, 2, "refused.example", QType::A),
            Err(ParseError::Rcode(5))
        );
    }

    #[test]
    fn parse_nodata() {
        let mut p = header(3, RESPONSE, 1, 0);
        question(&mut p, "v4only.example", 28);
        let answer = parse_response(&p, 3, "v4only.example", QType::Aaaa).unwrap();
        assert_eq!(
            (answer.status, answer.addrs.len(), answer.ttl),
            (Status::NoError, 0, 0)
        );
        // An A record in an AAAA answer is not an address for us.
        let mut p = header(3, RESPONSE, 1, 1);
        question(&mut p, "v4only.example", 28);
        record(&mut p, &PTR_QNAME, 1, 60, &[1, 2, 3, 4]);
        let answer = parse_response(&p, 3, "v4only.example", QType::Aaaa).unwrap();
        assert!(answer.addrs.is_empty());
    }

    #[test]
    fn parse_truncated_flag() {
        let mut p = header(4, RESPONSE | FLAG_TC, 1, 0);
        question(&mut p, "big.example", 1);
        let answer = parse_response(&p, 4, "big.example", QType::A).unwrap();
        assert_eq!(answer.status, Status::Truncated);
    }

    #[test]
    fn parse_rejects_foreign_packets() {
        let p = a_response(9);
        assert_eq!(
            parse_response(&p, 10, "www.example.com", QType::A),
            Err(ParseError::WrongId)
        );
        assert_eq!(
            parse_response(&p, 9, "www.example.org", QType::A),
            Err(ParseError::QuestionMismatch)
        );
        assert_eq!(
            parse_response(&p, 9, "www.example.com", QType::Aaaa),
            Err(ParseError::QuestionMismatch)
        );
        let mut query = p.clone();
        query[2] &= 0x7F;
        assert_eq!(
            parse_response(&query, 9, "www.example.com", QType::A),
            Err(ParseError::NotResponse)
        );
        let mut two_questions = p.clone();
        two_questions[5] = 2;
        assert_eq!(
            parse_response(&two_questions, 9, "www.example.com", QType::A),
            Err(ParseError::BadQuestionCount)
        );
        assert_eq!(
            parse_response(&p[..11], 9, "www.example.com", QType::A),
            Err(ParseError::TooShort)
        );
        for e in [
            ParseError::WrongId,
            ParseError::QuestionMismatch,
            ParseError::NotResponse,
        ] {
            assert!(e.is_foreign());
        }
        assert!(!ParseError::BadPointer.is_foreign());
    }

    #[test]
    fn parse_compression_loop() {
        // Answer owner is a pointer to itself.
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        let here = p.len() as u8;
        record(&mut p, &[0xC0, here], 1, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::BadPointer)
        );

        // Label then pointer back to the label: a -> a -> a ...
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        let here = p.len() as u8;
        record(&mut p, &[1, b'a', 0xC0, here], 1, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::BadPointer)
        );

        // Loop in the question: not verifiable, so not ours.
        let mut p = header(1, RESPONSE, 1, 0);
        p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::QuestionMismatch)
        );
    }

    #[test]
    fn parse_bad_pointers() {
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        record(&mut p, &[0xC0, 0xFF], 1, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::PointerOutOfRange)
        );

        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        record(&mut p, &[0xC0, 2], 1, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::PointerOutOfRange)
        );

        // Forward pointer (into its own RDATA).
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        let target = (p.len() + 12) as u8;
        record(&mut p, &[0xC0, target], 1, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::BadPointer)
        );
    }

    #[test]
    fn parse_truncated_at_every_length() {
        let p = a_response(9);
        assert!(parse_response(&p, 9, "www.example.com", QType::A).is_ok());
        for len in 0..p.len() {
            let result = parse_response(&p[..len], 9, "www.example.com", QType::A);
            assert!(result.is_err(), "prefix of {len} bytes parsed: {result:?}");
        }
    }

    #[test]
    fn parse_oversized_names_and_labels() {
        // Owner name of 5 labels of 63 bytes (> 255).
        let mut owner = Vec::new();
        for _ in 0..5 {
            owner.push(63);
            owner.extend_from_slice(&[b'a'; 63]);
        }
        owner.push(0);
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        record(&mut p, &owner, 1, 60, &[1, 2, 3, 4]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::NameTooLong)
        );

        // Length byte 64 and 0x80: not a label.
        for byte in [64u8, 0x80] {
            let mut p = header(1, RESPONSE, 1, 1);
            question(&mut p, "a.x", 1);
            let mut owner = vec![byte];
            owner.extend_from_slice(&[b'a'; 64]);
            owner.push(0);
            record(&mut p, &owner, 1, 60, &[1, 2, 3, 4]);
            assert_eq!(
                parse_response(&p, 1, "a.x", QType::A),
                Err(ParseError::BadLabel)
            );
        }
    }

    #[test]
    fn parse_rdata_overrun_and_bad_rdata() {
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        record(&mut p, &PTR_QNAME, 1, 60, &[1, 2, 3, 4]);
        let len = p.len();
        p[len - 5] = 200; // RDLENGTH low byte
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::RdataOverrun)
        );

        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        record(&mut p, &PTR_QNAME, 1, 60, &[1, 2, 3, 4, 5]);
        assert_eq!(
            parse_response(&p, 1, "a.x", QType::A),
            Err(ParseError::BadRdata)
        );

        // Answer count larger than the records present.
        let mut p = a_response(9);
        p[7] = 3;
        assert_eq!(
            parse_response(&p, 9, "www.example.com", QType::A),
            Err(ParseError::UnexpectedEnd)
        );
    }

    #[test]
    fn parse_ttl_with_top_bit_is_zero() {
        let mut p = header(1, RESPONSE, 1, 1);
        question(&mut p, "a.x", 1);
        record(&mut p, &PTR_QNAME, 1, 0x8000_0000, &[1, 2, 3, 4]);
        assert_eq!(parse_response(&p, 1, "a.x", QType::A).unwrap().ttl, 0);
    }

    #[test]
    fn parse_fuzz_does_not_panic() {
        let mut rng = Rng { state: 0x5EED };
        let mut seeds = vec![a_response(9)];
        let mut p = header(9, RESPONSE, 1, 3);
        question(&mut p, "www.example.com", 1);
        record(&mut p, &PTR_QNAME, 5, 30, &[1, b'b', 0xC0, 12]);
        record(&mut p, &[1, b'b', 0xC0, 12], 5, 30, &wire_name("c.d"));
        record(&mut p, &wire_name("c.d"), 1, 30, &[1, 2, 3, 4]);
        seeds.push(p);
        let started = Instant::now();
        let mut ok = 0;
        for round in 0..30_000u32 {
            let mut packet = if round % 5 == 0 {
                let len = (rng.next_u64() % 300) as usize;
                (0..len).map(|_| rng.next_u64() as u8).collect()
            } else {
                seeds[round as usize % seeds.len()].clone()
            };
            let flips = 1 + rng.next_u64() % 4;
            for _ in 0..flips {
                if packet.is_empty() {
                    break;
                }
                let at = (rng.next_u64() as usize) % packet.len();
                match rng.next_u64() % 3 {
                    0 => packet[at] = rng.next_u64() as u8,
                    1 => packet[at] ^= 0xC0,
                    _ => packet.truncate(at),
                }
            }
            if parse_response(&packet, 9, "www.example.com", QType::A).is_ok() {
                ok += 1;
            }
        }
        assert!(ok > 0, "mutations should leave some packets valid");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    // -- resolv.conf, hosts, candidates ---------------------------------------

    #[test]
    fn resolv_conf_full() {
        let text = "# comment\n\
                    ; other comment\n\
                    nameserver 10.0.0.1\n\
                    nameserver 2001:db8::53 # trailing\n\
                    search Svc.Cluster.Local cluster.local.\n\
                    options ndots:5 timeout:2 attempts:3 rotate edns0\n";
        let (conf, warnings) = parse_resolv_conf(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            conf.nameservers,
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(conf.search, vec!["svc.cluster.local", "cluster.local"]);
        assert_eq!(
            (conf.ndots, conf.timeout, conf.attempts),
            (5, Duration::from_secs(2), 3)
        );
    }

    #[test]
    fn resolv_conf_defaults_and_domain() {
        let (conf, warnings) = parse_resolv_conf("");
        assert!(warnings.is_empty());
        assert_eq!(conf, ResolvConf::default());
        assert_eq!(
            conf.nameservers,
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            (conf.ndots, conf.timeout, conf.attempts),
            (1, Duration::from_secs(5), 2)
        );

        // Last of search/domain wins; domain takes one name.
        let (conf, _) = parse_resolv_conf("search a.com b.com\ndomain c.com d.com\n");
        assert_eq!(conf.search, vec!["c.com"]);
        let (conf, _) = parse_resolv_conf("domain c.com\nsearch a.com b.com\n");
        assert_eq!(conf.search, vec!["a.com", "b.com"]);
    }

    #[test]
    fn resolv_conf_malformed_lines() {
        let text = "nameserver\n\
                    nameserver not-an-ip\n\
                    nameserver 10.0.0.1\n\
                    nameserver 10.0.0.2\n\
                    nameserver 10.0.0.3\n\
                    nameserver 10.0.0.4\n\
                    nameserver fe80::1%eth0\n\
                    options ndots:x timeout: attempts:99 ndots:99 timeout:0\n\
                    frobnicate yes\n\
                    search\n\
                    search a..b ok.com\n\
                    sortlist 10.0.0.0/8\n";
        let (conf, warnings) = parse_resolv_conf(text);
        assert_eq!(conf.nameservers.len(), 3);
        assert_eq!(conf.attempts, MAX_ATTEMPTS);
        assert_eq!(conf.ndots, MAX_NDOTS);
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.search, vec!["ok.com"]);
        let expect_lines = [1, 2, 6, 7, 8, 8, 9, 10, 11];
        let got: Vec<usize> = warnings
            .iter()
            .map(|w| {
                w.trim_start_matches("line ")
                    .split(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, expect_lines, "{warnings:#?}");
    }

    #[test]
    fn resolv_conf_limits_search() {
        let (conf, warnings) = parse_resolv_conf("search a b c d e f g\n");
        assert_eq!(conf.search.len(), MAX_SEARCH_DOMAINS);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn hosts_file() {
        let text = "127.0.0.1 localhost\n\
                    ::1 localhost ip6-localhost   # loopback\n\
                    # 10.0.0.9 commented.out\n\
                    \n\
                    10.1.2.3\tDB.Internal db\n\
                    2001:db8::7 v6only.internal\n\
                    garbage line here\n\
                    10.1.2.4 db\n";
        let hosts = parse_hosts(text);
        assert_eq!(hosts.first("LOCALHOST."), Some(v4(127, 0, 0, 1)));
        assert_eq!(hosts.lookup("localhost").unwrap().len(), 2);
        assert_eq!(
            hosts.first("ip6-localhost"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(hosts.first("db.internal"), Some(v4(10, 1, 2, 3)));
        assert_eq!(
            hosts.lookup("db").unwrap(),
            &[v4(10, 1, 2, 3), v4(10, 1, 2, 4)]
        );
        assert_eq!(hosts.first("v6only.internal"), "2001:db8::7".parse().ok());
        assert_eq!(hosts.first("commented.out"), None);
        assert_eq!(hosts.first("garbage"), None);
        assert_eq!(hosts.len(), 5);
    }

    #[test]
    fn search_candidates() {
        let conf = ResolvConf {
            search: vec!["a.com".to_string(), "b.com".to_string()],
            ..ResolvConf::default()
        };
        assert_eq!(
            candidates("Foo", &conf),
            vec!["foo.a.com", "foo.b.com", "foo"]
        );
        assert_eq!(
            candidates("foo.bar", &conf),
            vec!["foo.bar", "foo.bar.a.com", "foo.bar.b.com"]
        );
        assert_eq!(candidates("foo.", &conf), vec!["foo"]);
        let conf5 = ResolvConf {
            ndots: 5,
            ..conf.clone()
        };
        assert_eq!(
            candidates("svc.ns.svc", &conf5),
            vec!["svc.ns.svc.a.com", "svc.ns.svc.b.com", "svc.ns.svc"]
        );
        let conf0 = ResolvConf { ndots: 0, ..conf };
        assert_eq!(
            candidates("foo", &conf0),
            vec!["foo", "foo.a.com", "foo.b.com"]
        );
        assert_eq!(candidates("foo", &ResolvConf::default()), vec!["foo"]);
        // A candidate that would be too long is left out.
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(55),
        ]
        .join(".");
        assert_eq!(
            candidates(
                &long,
                &ResolvConf {
                    ndots: 9,
                    ..ResolvConf::default()
                }
            )
            .len(),
            1
        );
    }

    // -- walk -------------------------------------------------------------------

    #[test]
    fn walk_order_and_final_failure() {
        let mut walk = Walk {
            candidates: vec!["x.a.com".into(), "x".into()],
            index: 0,
            qtype: QType::A,
            nodata: false,
            servfail: false,
            answer: Vec::new(),
        };
        assert_eq!(walk.apply(Err(DnsFailure::NxDomain)), None);
        assert_eq!(walk.current(), Some(("x", QType::A)));
        assert_eq!(walk.apply(Ok(vec![])), None);
        assert_eq!(walk.current(), Some(("x", QType::Aaaa)));
        assert_eq!(
            walk.apply(Err(DnsFailure::NoAddress)),
            Some(Err(DnsFailure::NoAddress))
        );

        let mut walk = Walk {
            candidates: vec!["x".into()],
            index: 0,
            qtype: QType::A,
            nodata: false,
            servfail: false,
            answer: Vec::new(),
        };
        assert_eq!(
            walk.apply(Err(DnsFailure::ServFail)),
            Some(Err(DnsFailure::ServFail))
        );
        let mut walk = Walk {
            candidates: vec!["x".into(), "y".into()],
            index: 0,
            qtype: QType::A,
            nodata: false,
            servfail: false,
            answer: Vec::new(),
        };
        assert_eq!(
            walk.apply(Err(DnsFailure::Timeout)),
            Some(Err(DnsFailure::Timeout))
        );
    }

    // -- cache --------------------------------------------------------------------

    #[test]
    fn cache_ttl_clamp_and_expiry() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut cache = Cache::new();
        cache.insert("Short.Example", QType::A, Ok(vec![v4(1, 1, 1, 1)]), 1, t0);
        cache.insert(
            "long.example",
            QType::A,
            Ok(vec![v4(2, 2, 2, 2)]),
            86_400,
            t0,
        );
        cache.insert("mid.example", QType::A, Ok(vec![v4(3, 3, 3, 3)]), 60, t0);
        assert_eq!(
            cache.get("short.example.", QType::A, t0 + s(4)),
            Some(Ok(vec![v4(1, 1, 1, 1)]))
        );
        assert_eq!(cache.get("short.example", QType::Aaaa, t0), None);
        assert_eq!(cache.get("short.example", QType::A, t0 + MIN_TTL), None);
        assert_eq!(cache.len(), 2, "expired entry removed on get");
        assert!(cache.get("mid.example", QType::A, t0 + s(59)).is_some());
        assert!(cache.get("mid.example", QType::A, t0 + s(60)).is_none());
        assert!(cache.get("long.example", QType::A, t0 + s(299)).is_some());
        assert!(cache.get("long.example", QType::A, t0 + MAX_TTL).is_none());
        assert_eq!(Cache::positive_lifetime(0), MIN_TTL);
        assert_eq!(Cache::positive_lifetime(u32::MAX), MAX_TTL);
    }

    #[test]
    fn cache_negative() {
        let t0 = Instant::now();
        let mut cache = Cache::new();
        cache.insert("nx", QType::A, Err(DnsFailure::NxDomain), 3600, t0);
        cache.insert("sf", QType::A, Err(DnsFailure::ServFail), 0, t0);
        cache.insert("nodata", QType::Aaaa, Ok(vec![]), 3600, t0);
        cache.insert("slow", QType::A, Err(DnsFailure::Timeout), 0, t0);
        cache.insert("err", QType::A, Err(DnsFailure::Error("x".into())), 0, t0);
        assert_eq!(cache.len(), 3, "timeouts and errors are not cached");
        let just_before = t0 + NEGATIVE_TTL - Duration::from_millis(1);
        assert_eq!(
            cache.get("nx", QType::A, just_before),
            Some(Err(DnsFailure::NxDomain))
        );
        assert_eq!(
            cache.get("sf", QType::A, just_before),
            Some(Err(DnsFailure::ServFail))
        );
        assert_eq!(
            cache.get("nodata", QType::Aaaa, just_before),
            Some(Err(DnsFailure::NoAddress))
        );
        assert_eq!(cache.get("nx", QType::A, t0 + NEGATIVE_TTL), None);
    }

    #[test]
    fn cache_bound_evicts_soonest_expiry() {
        let t0 = Instant::now();
        let mut cache = Cache::new();
        for i in 0..MAX_CACHE_ENTRIES {
            let ttl = if i == 1000 { 5 } else { 200 };
            cache.insert(
                &format!("host{i}.example"),
                QType::A,
                Ok(vec![v4(10, 0, 0, 1)]),
                ttl,
                t0,
            );
        }
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        // Re-inserting an existing key does not evict.
        cache.insert(
            "host1.example",
            QType::A,
            Ok(vec![v4(10, 0, 0, 2)]),
            200,
            t0,
        );
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        assert!(cache.get("host1000.example", QType::A, t0).is_some());
        cache.insert("new.example", QType::A, Ok(vec![v4(10, 0, 0, 3)]), 200, t0);
        assert_eq!(cache.len(), MAX_CACHE_ENTRIES);
        assert!(
            cache.get("host1000.example", QType::A, t0).is_none(),
            "soonest expiry evicted"
        );
        assert!(cache.get("new.example", QType::A, t0).is_some());
    }

    #[test]
    fn cache_memory_for_1000_names() {
        let t0 = Instant::now();
        let mut cache = Cache::new();
        for i in 0..1000 {
            let name = format!("backend-{i:04}.svc.cluster.local");
            cache.insert(
                &name,
                QType::A,
                Ok(vec![v4(10, 0, (i / 256) as u8, i as u8)]),
                60,
                t0,
            );
        }
        let bytes = cache.approx_memory_bytes();
        eprintln!("cache memory for 1000 names: {bytes} bytes");
        assert!(bytes < 256 * 1024, "{bytes}");
    }
}
