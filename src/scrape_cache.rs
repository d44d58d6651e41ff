//! Render once, serve many: the /metrics body, and its gzip form, kept per snapshot
//! generation, so that a scrape copies bytes instead of rendering 10,000 routes again.
//!
//! The body has two parts. The snapshot part (every `sigma_*` family, ~99% of the bytes) is
//! rendered the first time a scrape finds the snapshot changed since the last render, and
//! deflated the first time a gzip scrape finds it so (Prometheus always asks for gzip, so a
//! curl-only or a Prometheus-only agent renders one form). The `process_*` part (CPU seconds,
//! memory, fds: they change between snapshot changes) is read and rendered at every scrape,
//! a few hundred bytes, appended as plain text or as the final deflate block
//! (see `gzip.rs`). So every scrape's figures are exact, and the cost per scrape is a copy.
//!
//! Memory: the cached body, its deflated form (~1/16 of it), one reusable compressor
//! (~300 KiB) and a small tail buffer; all bounded by the route count.

use crate::gzip::{Deflater, Prefix};
use crate::metrics::{self, ProcessStats};
use crate::snapshot::Snapshot;

/// Tail buffers above this are freed (a tail is normally ~800 bytes).
const KEEP_TAIL_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub struct ScrapeCache {
    /// The snapshot part, valid for `body_generation`.
    body: Vec<u8>,
    body_generation: Option<u64>,
    /// `body` gzipped up to a sync flush, valid for `gzip_generation`.
    gzip: Prefix,
    gzip_generation: Option<u64>,
    deflater: Option<Deflater>,
    tail: Vec<u8>,
    /// Times the snapshot part was rendered and deflated (tests and `make bench` read them).
    pub renders: u64,
    pub compressions: u64,
}

impl ScrapeCache {
    pub fn new() -> ScrapeCache {
        ScrapeCache::default()
    }

    /// Appends the whole /metrics body for `snap` to `out`, gzip-compressed when `gzip`.
    pub fn write(
        &mut self,
        snap: &Snapshot,
        process: &ProcessStats,
        gzip: bool,
        out: &mut Vec<u8>,
    ) {
        let generation = snap.generation();
        if self.body_generation != Some(generation) {
            self.body.clear();
            metrics::render_snapshot(snap, &mut self.body);
            self.body_generation = Some(generation);
            self.renders += 1;
        }
        self.tail.clear();
        metrics::render_process(snap, process, &mut self.tail);
        if gzip {
            let deflater = self.deflater.get_or_insert_with(Deflater::new);
            if self.gzip_generation != Some(generation) {
                deflater.prefix(&self.body, &mut self.gzip);
                self.gzip_generation = Some(generation);
                self.compressions += 1;
            }
            deflater.finish(&self.gzip, &self.tail, out);
        } else {
            out.extend_from_slice(&self.body);
            out.extend_from_slice(&self.tail);
        }
        if self.tail.capacity() > KEEP_TAIL_BYTES {
            self.tail = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, reachable, route};
    use miniz_oxide::inflate::decompress_to_vec;
    use std::time::Duration;

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        decompress_to_vec(&gz[10..gz.len() - 8]).unwrap()
    }

    #[test]
    fn renders_once_per_change_and_serves_exact_bytes() {
        let mut snap = fixtures::snapshot(vec![
            route("n1", "a", 10001, "127.0.0.1", 8080),
            route("n1", "b", 10002, "127.0.0.1", 8081),
        ]);
        let mut cache = ScrapeCache::new();
        let process = |cpu: f64| ProcessStats {
            cpu_seconds: Some(cpu),
            ..ProcessStats::default()
        };
        let whole = |snap: &Snapshot, p: &ProcessStats| {
            let mut v = Vec::new();
            metrics::render(snap, p, &mut v);
            v
        };
        for i in 0..3 {
            let p = process(i as f64);
            let (mut plain, mut gz) = (Vec::new(), Vec::new());
            cache.write(&snap, &p, false, &mut plain);
            cache.write(&snap, &p, true, &mut gz);
            // Byte for byte what an uncached render gives, process figures included.
            assert_eq!(plain, whole(&snap, &p));
            assert_eq!(gunzip(&gz), plain);
        }
        assert_eq!((cache.renders, cache.compressions), (1, 1));
        snap.record(0, reachable(Duration::from_micros(1500)), fixtures::t0());
        let p = process(9.0);
        let mut gz = Vec::new();
        cache.write(&snap, &p, true, &mut gz);
        assert_eq!(gunzip(&gz), whole(&snap, &p));
        assert!(String::from_utf8(gunzip(&gz))
            .unwrap()
            .contains("sigma_backend_probe_latency_ms{node=\"n1\",route=\"a\",listen_port=\"10001\",backend=\"127.0.0.1:8080\"} 1.5\n"));
        assert_eq!((cache.renders, cache.compressions), (2, 2));
        snap.touch();
        let mut plain = Vec::new();
        cache.write(&snap, &p, false, &mut plain);
        assert_eq!((cache.renders, cache.compressions), (3, 2));
    }
}
