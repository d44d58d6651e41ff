//! Test-only DNS packet builders, written independently of `wire.rs` so that the parser and
//! the lookup are checked against bytes assembled by hand.

use std::net::{IpAddr, Ipv4Addr};

// The numbers of RFC 1035 / 3596 the tests speak, spelled out here rather than taken from
// `wire.rs`, so a wrong constant there can't make its own test pass.
pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const TYPE_CNAME: u16 = 5;
/// Header flag: the reply was truncated.
pub(crate) const TC: u16 = 0x0200;
pub(crate) const SERVFAIL: u16 = 2;
pub(crate) const NXDOMAIN: u16 = 3;

pub(crate) use crate::fixtures::dns_name as wire_name;

pub(crate) fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [id, flags, qd, an, 0, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out
}

pub(crate) fn question(out: &mut Vec<u8>, name: &str, qtype: u16) {
    out.extend_from_slice(&wire_name(name));
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
}

pub(crate) fn record(out: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(owner);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

pub(crate) const PTR_QNAME: [u8; 2] = [0xC0, 12];
pub(crate) const RESPONSE: u16 = 0x8180; // QR, RD, RA

/// Response to `www.example.com` A with two addresses (TTL 300 and 60).
pub(crate) fn a_response(id: u16) -> Vec<u8> {
    let mut p = header(id, RESPONSE, 1, 2);
    question(&mut p, "www.example.com", 1);
    record(&mut p, &PTR_QNAME, 1, 300, &[192, 0, 2, 1]);
    record(&mut p, &PTR_QNAME, 1, 60, &[192, 0, 2, 2]);
    p
}

pub(crate) fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}
