//! Differential test of `sigma_agent_lite::json` against `serde_json`.
//!
//! Both parsers get (a) random bytes, random strings over a JSON-ish
//! alphabet, random number texts and random string escapes, (b) valid documents generated as
//! `serde_json::Value`s and serialized (compact and pretty), (c) mutations of
//! those (byte flip/insert/delete/truncate) and (d) deep nestings. They must
//! agree on accept/reject; when both accept, the values must be equal, and
//! our writer's output must parse (by both) back to the same value.
//!
//! Intentional differences, allowed explicitly in `check` and nowhere else:
//! - Duplicate object keys: we reject (`Error::DuplicateKey`), serde_json
//!   keeps the last one.
//! - Nesting: we reject deeper than `MAX_DEPTH` (64), serde_json accepts up
//!   to 127. A `TooDeep` error is verified to be at a real depth of 65.
//! - Numbers whose magnitude overflows f64 (`1e400`): serde_json rejects
//!   them ("number out of range"), we accept and keep the raw text
//!   (`Number::as_f64` returns `None`).
//! - `MAX_INPUT_LEN` / `MAX_VALUES`: serde_json has no such limits (inputs
//!   here are far too small to hit them).
//!
//! Numbers are compared as `raw().parse::<f64>()` against serde_json's
//! `as_f64()`. serde_json's `float_roundtrip` feature (dev-dependency only)
//! makes its float parsing correctly rounded so that exact equality holds;
//! integers that fit i64/u64 are also compared exactly.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value as Sj;
use sigma_agent_lite::json::{self, Error, Value, MAX_DEPTH};
use sigma_agent_lite::json_write;

const CASES: u32 = 2000;

/// Bytes that make random inputs likely to get deep into the grammar.
const ALPHABET: &[u8] =
    b"{}[]\":,.-+0123456789eE \t\n\rtruefalsnl\\/ubfDdcC8Aa\x00\x1f\x7f\xc3\xa9\xff";

/// Our value equals serde_json's (numbers compared as f64, see header).
fn same(ours: &Value, theirs: &Sj) -> bool {
    match (ours, theirs) {
        (Value::Null, Sj::Null) => true,
        (Value::Bool(a), Sj::Bool(b)) => a == b,
        (Value::Number(n), Sj::Number(m)) => {
            // serde_json reads `-0` and integers beyond u64 as floats.
            n.raw().parse::<f64>().ok() == m.as_f64()
                && (m.is_f64() || (n.as_i64() == m.as_i64() && n.as_u64() == m.as_u64()))
        }
        (Value::String(a), Sj::String(b)) => a == b,
        (Value::Array(a), Sj::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Sj::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|t| same(v, t)))
        }
        _ => false,
    }
}

/// True if some number in `v` overflows f64.
fn has_huge_number(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_none(),
        Value::Array(a) => a.iter().any(has_huge_number),
        Value::Object(o) => o.iter().any(|(_, v)| has_huge_number(v)),
        _ => false,
    }
}

/// Bracket nesting depth at the end of `bytes`, ignoring string contents.
/// Exact when `bytes` is a valid JSON prefix.
fn depth_at_end(bytes: &[u8]) -> usize {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    depth
}

/// Parses `input` with both parsers and checks that they agree.
fn check(input: &[u8]) -> Result<(), TestCaseError> {
    let ours = json::parse(input);
    let theirs = serde_json::from_slice::<Sj>(input);
    match (&ours, &theirs) {
        (Ok(v), Ok(t)) => {
            prop_assert!(same(v, t), "values differ: ours {:?}, serde {:?}", v, t);
            let mut out = Vec::new();
            json_write::write_value(&mut out, v);
            let reparsed = json::parse(&out);
            prop_assert_eq!(reparsed.as_ref(), Ok(v), "our writer: {:?}", out);
            let back = serde_json::from_slice::<Sj>(&out);
            prop_assert!(
                back.as_ref().is_ok_and(|b| same(v, b)),
                "serde reads our writer's {:?} as {:?}",
                String::from_utf8_lossy(&out),
                back
            );
        }
        (Ok(v), Err(e)) => {
            // Intentional: serde_json rejects numbers that overflow f64.
            prop_assert!(
                has_huge_number(v) && e.to_string().contains("number out of range"),
                "only we accept {:?}: serde says {}",
                String::from_utf8_lossy(input),
                e
            );
        }
        (Err(e), Ok(_)) => match *e {
            // Intentional: serde_json keeps the last duplicate key.
            Error::DuplicateKey { .. } => {}
            // Intentional: our depth limit is lower; check it is real.
            Error::TooDeep { offset } => {
                let prefix = input.get(..=offset).unwrap_or(input);
                prop_assert_eq!(depth_at_end(prefix), MAX_DEPTH + 1);
            }
            _ => prop_assert!(
                false,
                "only serde accepts {:?}: we say {}",
                String::from_utf8_lossy(input),
                e
            ),
        },
        (Err(_), Err(_)) => {}
    }
    Ok(())
}

fn arb_string() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}', 'é',
        '\u{2028}', '\u{ffff}', '😀',
    ]);
    let ch = prop_oneof![any::<char>(), special, prop::char::range('a', 'e')];
    prop::collection::vec(ch, 0..8).prop_map(String::from_iter)
}

/// Random JSON documents of depth at most 5.
fn arb_json() -> impl Strategy<Value = Sj> {
    let leaf = prop_oneof![
        Just(Sj::Null),
        any::<bool>().prop_map(Sj::Bool),
        any::<i64>().prop_map(Sj::from),
        any::<u64>().prop_map(Sj::from),
        any::<f64>().prop_map(Sj::from), // NaN/inf become null
        arb_string().prop_map(Sj::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Sj::Array),
            prop::collection::vec((arb_string(), inner), 0..6)
                .prop_map(|members| Sj::Object(members.into_iter().collect())),
        ]
    })
}

fn serialize(v: &Sj, pretty: bool) -> Vec<u8> {
    let out = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    out.unwrap_or_default()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(ALPHABET)];
    prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(doc: &mut Vec<u8>, m: &Mutation) {
    if doc.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(i, b) => {
            let i = i.index(doc.len());
            doc[i] = *b;
        }
        Mutation::Insert(i, b) => doc.insert(i.index(doc.len() + 1), *b),
        Mutation::Delete(i) => {
            doc.remove(i.index(doc.len()));
        }
        Mutation::Truncate(i) => doc.truncate(i.index(doc.len())),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn random_bytes(input in prop::collection::vec(any::<u8>(), 0..48)) {
        check(&input)?;
    }

    #[test]
    fn random_json_alphabet(input in prop::collection::vec(prop::sample::select(ALPHABET), 0..48)) {
        check(&input)?;
    }

    #[test]
    fn random_numbers(
        text in "[ ]?[-+]?(0|00|[1-9][0-9]{0,24})?(\\.[0-9]{0,20})?([eE][-+]?[0-9]{0,4})?[ ]?"
    ) {
        check(text.as_bytes())?;
    }

    #[test]
    fn random_escapes(
        text in r#""(\\u(00|D[89AB]|D[C-F]|[1-9E-F][0-9A-Fa-f])[0-9A-Fa-f]{2}|\\u[0-9A-Ga-g]{0,4}|\\[nrtbf/\\"xU]|[a\t"])*"?"#
    ) {
        check(text.as_bytes())?;
    }

    #[test]
    fn valid_documents(v in arb_json(), pretty in any::<bool>()) {
        let doc = serialize(&v, pretty);
        check(&doc)?;
        let ours = json::parse(&doc);
        prop_assert!(ours.as_ref().is_ok_and(|o| same(o, &v)), "{:?}", ours);
    }

    #[test]
    fn mutated_documents(
        v in arb_json(),
        pretty in any::<bool>(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let mut doc = serialize(&v, pretty);
        for m in &mutations {
            mutate(&mut doc, m);
        }
        check(&doc)?;
    }

    #[test]
    fn deep_nesting(opens in 0usize..140, closes in 0usize..140, object in any::<bool>()) {
        let (open, close) = if object { ("{\"k\":", "}") } else { ("[", "]") };
        let mut doc = open.repeat(opens);
        doc.push_str(if object { "0" } else { "" });
        doc.push_str(&close.repeat(closes));
        check(doc.as_bytes())?;
        // Balanced and within the limit is valid, except the empty document (no array opened).
        if opens == closes && opens <= MAX_DEPTH && (object || opens > 0) {
            prop_assert!(json::parse(doc.as_bytes()).is_ok());
        }
    }
}
