//! The answer cache: results by (name, family) with their expiry.
//!
//! # Why
//! The agent probes the same few hundred names every cycle; without a cache each probe would
//! cost a round trip to the resolver. Answers are kept for their TTL clamped to
//! [`MIN_TTL`, `MAX_TTL`], negative ones for [`NEGATIVE_TTL`], and the table is bounded by
//! [`MAX_CACHE_ENTRIES`] (evicting the soonest expiry). Pure: time is passed in as `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::wire::normalize_name;
use super::{DnsFailure, QType, MAX_CACHE_ENTRIES, MAX_TTL, MIN_TTL, NEGATIVE_TTL};

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

/// `now + delta`, or `now` if that overflows.
pub(super) fn later(now: Instant, delta: Duration) -> Instant {
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
            Err(DnsFailure::Timeout | DnsFailure::Error(_) | DnsFailure::Local(_)) => return,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::testkit::*;

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
