//! DNS messages on the wire (RFC 1035): building a query and validating a reply.
//!
//! # Why
//! Pure code, apart from the sockets: the lookup (`lookup.rs`) hands received bytes here and
//! gets an [`Answer`] or a [`ParseError`] that says whether the packet was simply not ours
//! (dropped, keep waiting) or a broken reply from our server (the try fails).
//!
//! # What
//! [`build_query`] (one question, RD=1, class IN), [`validate_name`], [`normalize_name`] and
//! [`parse_response`]: id, QR, opcode and question are checked against what was asked, the
//! answer section is walked along the CNAME chain from the question's name (at most
//! [`MAX_CNAME_CHAIN`] links) and up to [`MAX_ADDRS_PER_ANSWER`] addresses of the asked type
//! are kept. Compression pointers are followed at most [`MAX_POINTER_HOPS`] times per name.
//! No I/O, no clock, no panic on any input: packets are untrusted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    QType, HEADER_LEN, MAX_ADDRS_PER_ANSWER, MAX_CNAME_CHAIN, MAX_LABEL_LEN, MAX_NAME_LEN,
    MAX_POINTER_HOPS,
};

const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const RCODE_SERVFAIL: u16 = 2;
const RCODE_NXDOMAIN: u16 = 3;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::testkit::*;
    use crate::dns::Rng;
    use std::time::{Duration, Instant};

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
        let mut rng = Rng::from_seed(0x5EED);
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
}
