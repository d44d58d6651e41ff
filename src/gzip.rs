//! gzip (RFC 1952) for a /metrics body made of a cached part and a small per-scrape tail,
//! without compressing the cached part again for every scrape.
//!
//! A deflate stream (RFC 1951) is a series of blocks, and only the last carries BFINAL. The
//! cached part is deflated once (level [`LEVEL`], as `gzip -6`) and ended with a *sync flush*:
//! its blocks are complete, none is final, and the stream stops on a byte boundary. A scrape
//! appends the tail deflated by a fresh (reset) compressor, whose last block is final, then
//! the trailer: CRC-32 and length of the whole uncompressed body. The tail's back-references
//! reach only into the tail, so the concatenation is one valid deflate stream, one gzip
//! member — what every decoder reads (no reliance on multi-member gzip).
//!
//! The deflate itself is `miniz_oxide` (see Cargo.toml and README "Runtime crates" for why
//! this crate); CRC-32 is the table-driven textbook loop below (a 1 KiB table built at compile
//! time). Pure: bytes in, bytes out.

use miniz_oxide::deflate::core::{
    compress_to_output, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};

/// Compression level, as `gzip -6` (zlib's default): within a few percent of level 9's size on
/// exposition text at a fraction of its CPU.
pub const LEVEL: u8 = 6;

/// The fixed 10-byte gzip header: magic, deflate, no flags, no mtime, no extra flags, OS
/// unknown (255).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A gzip-compressed prefix: header plus the deflated, sync-flushed cached part.
#[derive(Default)]
pub struct Prefix {
    pub bytes: Vec<u8>,
    /// CRC-32 register after the uncompressed prefix (not yet finalised).
    crc: u32,
    /// Uncompressed length of the prefix.
    len: usize,
}

/// One reusable deflate compressor (~300 KiB of tables and window, allocated once).
pub struct Deflater {
    compressor: Box<CompressorOxide>,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new()
    }
}

impl Deflater {
    pub fn new() -> Deflater {
        // window_bits 0: raw deflate (we write the gzip header and trailer ourselves).
        let flags = create_comp_flags_from_zip_params(LEVEL.into(), 0, 0);
        Deflater {
            compressor: Box::new(CompressorOxide::new(flags)),
        }
    }

    /// Compresses `body` into `prefix` (replacing it): gzip header + non-final deflate blocks.
    pub fn prefix(&mut self, body: &[u8], prefix: &mut Prefix) {
        prefix.bytes.clear();
        prefix.bytes.extend_from_slice(&HEADER);
        self.deflate(body, TDEFLFlush::Sync, &mut prefix.bytes);
        prefix.crc = crc32_update(!0, body);
        prefix.len = body.len();
    }

    /// Appends to `out` the whole gzip member for `prefix`'s body followed by `tail`.
    pub fn finish(&mut self, prefix: &Prefix, tail: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&prefix.bytes);
        self.deflate(tail, TDEFLFlush::Finish, out);
        let crc = !crc32_update(prefix.crc, tail);
        out.extend_from_slice(&crc.to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
        out.extend_from_slice(&((prefix.len + tail.len()) as u32).to_le_bytes());
    }

    fn deflate(&mut self, mut input: &[u8], flush: TDEFLFlush, out: &mut Vec<u8>) {
        self.compressor.reset();
        loop {
            let (status, consumed) = compress_to_output(&mut self.compressor, input, flush, |b| {
                out.extend_from_slice(b);
                true
            });
            input = &input[consumed.min(input.len())..];
            match status {
                TDEFLStatus::Done => return,
                // Sync: everything consumed and flushed.
                TDEFLStatus::Okay if input.is_empty() && flush == TDEFLFlush::Sync => return,
                TDEFLStatus::Okay => {}
                // Only reachable with bad parameters or a failing callback; ours never fails.
                _ => {
                    log::error!("gzip: deflate failed ({status:?})");
                    return;
                }
            }
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// Runs the CRC-32 register over `data` (start with `!0`, finish with `!`).
fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniz_oxide::inflate::decompress_to_vec;

    /// Checks the member's framing and inflates it: header, one deflate stream, CRC, ISIZE.
    fn gunzip(gz: &[u8]) -> Vec<u8> {
        assert_eq!(&gz[..10], &HEADER);
        let body = decompress_to_vec(&gz[10..gz.len() - 8]).expect("one valid deflate stream");
        let crc = u32::from_le_bytes(gz[gz.len() - 8..gz.len() - 4].try_into().unwrap());
        let size = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
        assert_eq!(crc, !crc32_update(!0, &body));
        assert_eq!(size as usize, body.len());
        body
    }

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(!crc32_update(!0, b"123456789"), 0xCBF4_3926);
        assert_eq!(
            !crc32_update(crc32_update(!0, b"1234"), b"56789"),
            0xCBF4_3926
        );
    }

    #[test]
    fn prefix_and_tail_make_one_member() {
        let mut body = Vec::new();
        for i in 0..5000 {
            body.extend_from_slice(
                format!(
                    "sigma_backend_reachable{{node=\"n{i}\",backend=\"10.0.0.{}:80\"}} 1\n",
                    i % 250
                )
                .as_bytes(),
            );
        }
        let tail = b"process_cpu_seconds_total 0.25\nprocess_open_fds 7\n";
        let mut d = Deflater::new();
        let mut prefix = Prefix::default();
        d.prefix(&body, &mut prefix);
        for tail in [&tail[..], b"", b"x"] {
            let mut out = Vec::new();
            d.finish(&prefix, tail, &mut out);
            let mut want = body.clone();
            want.extend_from_slice(tail);
            assert_eq!(gunzip(&out), want);
            assert!(
                out.len() < want.len() / 10,
                "{} of {}",
                out.len(),
                want.len()
            );
        }
        // An empty cached part works too.
        d.prefix(b"", &mut prefix);
        let mut out = Vec::new();
        d.finish(&prefix, tail, &mut out);
        assert_eq!(gunzip(&out), tail);
    }
}
