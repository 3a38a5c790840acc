//! A static sentence embedding: no model runs per request. Each word (a run of ASCII letters,
//! lower-cased: the featurizer's words) is looked up in a table of int8 vectors distilled
//! once, offline (`scripts/distill_embedding.py`: PPMI-SVD word vectors from WordNet 3.0 with
//! SIF weights folded in); the prompt's vector is the sum of its words' rows, L2-normalised
//! and quantised to int8. A few µs for a 4 KB prompt.
//!
//! Table file (`data/wordvec64.bin.gz`, gzip): b"SFWV", u32 version = 1, u32 n, u32 dim (LE),
//! then n * dim int8 (row-major), then the n words joined by '\n' in row order.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::features::Message;
use crate::CoreError;

/// Dimensions of the embedding.
pub const DIM: usize = 64;
/// Words longer than this are not in the table (and are skipped).
const MAX_WORD: usize = 32;

/// One row, aligned to a cache line: a lookup touches one line, not two.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Row([i8; DIM]);

pub struct WordTable {
    /// Open addressing on a word's hash: `(fingerprint << 32) | row`, 0 = empty (fingerprints
    /// are odd). One 8-byte slot per probe, so the 20k words' index is 256 KB.
    slots: Vec<u64>,
    shift: u32,
    rows: Vec<Row>,
}

/// A word packed as the featurizer packs it: lower-case bytes, zero-padded, little-endian,
/// `lo` = bytes 0..16 and `hi` = bytes 16..32 (0 for the usual short word).
#[inline]
pub fn word_hash(lo: u128, hi: u128) -> u64 {
    #[inline]
    fn mix(p: u128) -> u64 {
        ((p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (p >> 64) as u64)
            .wrapping_mul(0xD6E8_FEB8_6659_FD93)
    }
    let mut h = mix(lo);
    if hi != 0 {
        h = mix(((h as u128) << 64 | h as u128) ^ hi);
    }
    h ^ (h >> 32)
}

/// `word_hash` of a word of at most `MAX_WORD` lower-case bytes.
fn hash_bytes(w: &[u8]) -> u64 {
    let mut buf = [0u8; MAX_WORD];
    buf[..w.len()].copy_from_slice(w);
    let half = |r: &[u8]| u128::from_le_bytes(r.try_into().unwrap_or([0; 16]));
    word_hash(half(&buf[..16]), half(&buf[16..]))
}

/// A running sum of int8 rows: added in i16 lanes (a quarter of the work of widening every
/// byte to i32) and moved into i32 before any lane could overflow.
#[derive(Clone)]
pub struct Sum {
    low: [i16; DIM],
    high: [i32; DIM],
    pending: u32,
}

impl Default for Sum {
    fn default() -> Self {
        Sum {
            low: [0; DIM],
            high: [0; DIM],
            pending: 0,
        }
    }
}

impl Sum {
    /// At most 258 rows of |v| <= 127 fit an i16 lane; flush before that.
    const FLUSH_EVERY: u32 = 250;

    #[inline]
    fn add(&mut self, row: &[i8]) {
        for (a, &v) in self.low.iter_mut().zip(row) {
            *a += v as i16;
        }
        self.pending += 1;
        if self.pending == Self::FLUSH_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        for (h, l) in self.high.iter_mut().zip(self.low.iter_mut()) {
            *h += *l as i32;
            *l = 0;
        }
        self.pending = 0;
    }

    /// The exact sum of every row added.
    pub fn total(&self) -> [i32; DIM] {
        let mut out = self.high;
        for (o, &l) in out.iter_mut().zip(&self.low) {
            *o += l as i32;
        }
        out
    }
}

impl WordTable {
    /// Parse an uncompressed table (see the module docs).
    pub fn parse(raw: &[u8]) -> Result<WordTable, CoreError> {
        let bad = |why: &str| CoreError::Config(format!("embedding table: {why}"));
        if raw.len() < 16 || &raw[..4] != b"SFWV" {
            return Err(bad("not an SFWV file"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let (version, n, dim) = (u32_at(4), u32_at(8) as usize, u32_at(12) as usize);
        if version != 1 || dim != DIM {
            return Err(bad(&format!(
                "version {version}, dim {dim}; expected 1 and {DIM}"
            )));
        }
        let body = 16 + n * dim;
        if raw.len() < body {
            return Err(bad("truncated"));
        }
        let rows: Vec<Row> = raw[16..body]
            .chunks_exact(DIM)
            .map(|c| Row(std::array::from_fn(|j| c[j] as i8)))
            .collect();
        let words: Vec<&[u8]> = raw[body..]
            .split(|&b| b == b'\n')
            .filter(|w| !w.is_empty())
            .collect();
        if words.len() != n {
            return Err(bad(&format!("{} words for {n} rows", words.len())));
        }
        if words.iter().any(|w| w.len() > MAX_WORD) {
            return Err(bad(&format!("a word longer than {MAX_WORD} bytes")));
        }
        // Load at most 5/8: a miss (most words of a prompt are in the table, so misses are
        // rarer than hits) probes a few slots, usually within one cache line.
        let cap = (n * 3).next_power_of_two().max(2);
        let mut t = WordTable {
            slots: vec![0; cap],
            shift: 64 - cap.trailing_zeros(),
            rows,
        };
        let mask = cap - 1;
        for (i, w) in words.iter().enumerate() {
            let h = hash_bytes(w);
            let fp = (h | 1) << 32;
            let mut k = t.slot(h);
            while t.slots[k] != 0 {
                if t.slots[k] >> 32 << 32 == fp {
                    return Err(bad("a word appears twice (or two share a hash)"));
                }
                k = (k + 1) & mask;
            }
            t.slots[k] = fp | i as u64;
        }
        Ok(t)
    }

    #[inline]
    fn slot(&self, h: u64) -> usize {
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Add the row of the word packed as `word_hash` takes it to `acc`; false if unknown.
    #[inline]
    pub fn add(&self, lo: u128, hi: u128, acc: &mut Sum) -> bool {
        let h = word_hash(lo, hi);
        let fp = (h | 1) << 32;
        let mask = self.slots.len() - 1;
        let mut k = self.slot(h);
        loop {
            let s = self.slots[k];
            if s >> 32 << 32 == fp {
                acc.add(&self.rows[(s & 0xFFFF_FFFF) as usize].0);
                return true;
            }
            if s == 0 {
                return false;
            }
            k = (k + 1) & mask;
        }
    }

    /// A conversation's embedding: every message's words summed, then `finish`ed.
    pub fn embed(&self, messages: &[Message]) -> [i8; DIM] {
        let mut acc = Sum::default();
        for m in messages {
            self.add_text(&m.content, &mut acc);
        }
        finish(&acc)
    }

    /// Add every word of `text` to `acc`; returns how many were in the table.
    pub fn add_text(&self, text: &str, acc: &mut Sum) -> usize {
        // The word is packed into registers as it is read: bytes stored one at a time and
        // read back as a u128 would stall on store forwarding.
        let (mut key, mut n, mut hits) = ([0u128; 2], 0usize, 0usize);
        for &c in text.as_bytes().iter().chain(std::iter::once(&b' ')) {
            if c.is_ascii_alphabetic() {
                if n < MAX_WORD {
                    key[n / 16] |= ((c | 0x20) as u128) << (8 * (n % 16));
                }
                n += 1;
            } else if n > 0 {
                if n <= MAX_WORD {
                    hits += self.add(key[0], key[1], acc) as usize;
                }
                (key, n) = ([0; 2], 0);
            }
        }
        hits
    }
}

/// The summed rows as a unit vector in int8 (each component round(127 * a / |a|)); all
/// zeros when no word was known.
pub fn finish(sum: &Sum) -> [i8; DIM] {
    let acc = sum.total();
    let norm = acc
        .iter()
        .map(|&a| (a as f64) * (a as f64))
        .sum::<f64>()
        .sqrt();
    let mut out = [0i8; DIM];
    if norm > 0.0 {
        for (o, &a) in out.iter_mut().zip(&acc) {
            *o = (127.0 * a as f64 / norm).round().clamp(-127.0, 127.0) as i8;
        }
    }
    out
}

static TABLE: OnceLock<Result<WordTable, String>> = OnceLock::new();
/// Set when a load begins: a process about to fork waits for a load in progress (a child
/// would inherit a load no thread of its own finishes, and wait on it forever).
static STARTED: AtomicBool = AtomicBool::new(false);

/// Whether the table has begun loading (it may still be in progress).
pub fn started() -> bool {
    STARTED.load(Ordering::Acquire)
}

/// The bundled table, decompressed and indexed on first use (about 10 ms, once a process).
pub fn table() -> Result<&'static WordTable, CoreError> {
    TABLE
        .get_or_init(|| {
            STARTED.store(true, Ordering::Release);
            let gz: &[u8] = include_bytes!("data/wordvec64.bin.gz");
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(gz)
                .read_to_end(&mut raw)
                .map_err(|e| format!("embedding table: {e}"))?;
            WordTable::parse(&raw).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| CoreError::Config(e.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordTable {
        let mut raw = b"SFWV".to_vec();
        for v in [1u32, 2, DIM as u32] {
            raw.extend(v.to_le_bytes());
        }
        let mut rows = [0i8; 2 * DIM];
        rows[0] = 3; // "cat" -> e0
        rows[DIM + 1] = 4; // "dog" -> e1
        raw.extend(rows.iter().map(|&v| v as u8));
        raw.extend(b"cat\ndog\n");
        WordTable::parse(&raw).unwrap()
    }

    #[test]
    fn words_sum_and_normalise() {
        let t = tiny();
        let mut acc = Sum::default();
        let text = "The CAT, the cat and a Dog! unknownword";
        assert_eq!(t.add_text(text, &mut acc), 3);
        assert_eq!((acc.total()[0], acc.total()[1]), (6, 4));
        let e = finish(&acc);
        assert_eq!((e[0], e[1]), (106, 70)); // 127 * (6, 4) / sqrt(52)
        assert_eq!(finish(&Sum::default()), [0; DIM]);
        // far past an i16 lane's range: the flushes keep the sum exact
        let mut big = Sum::default();
        t.add_text(&"cat ".repeat(100_000), &mut big);
        assert_eq!(big.total()[0], 300_000);
    }

    #[test]
    fn featurizer_scan_adds_what_add_text_adds() {
        // Words at the packing's edges: 16 bytes (one half), 17 and 32 (two halves), and a
        // 33-letter word whose first 32 letters are a table word (in no table: skipped).
        let long = "abcdefghijklmnopqrstuvwxyzabcdef";
        let words = ["cat", &long[..16], &long[..17], long];
        let mut raw = b"SFWV".to_vec();
        for v in [1u32, words.len() as u32, DIM as u32] {
            raw.extend(v.to_le_bytes());
        }
        for i in 0..words.len() {
            raw.extend((0..DIM).map(|j| if j == i { 1u8 } else { 0 }));
        }
        raw.extend(words.join("\n").bytes());
        let t = WordTable::parse(&raw).unwrap();
        let text = format!(
            "Cat {} x{} {} {}, {}z CAT",
            long[..16].to_uppercase(),
            &long[..16],
            &long[..17],
            long,
            long
        );
        let mut direct = Sum::default();
        assert_eq!(t.add_text(&text, &mut direct), 5);
        assert_eq!(&direct.total()[..4], &[2, 1, 1, 1]);
        let msgs = [Message {
            role: "user".into(),
            content: text,
        }];
        let cfg = crate::features::FeaturizerConfig::default();
        let mut x = vec![0f32; cfg.dim()];
        let mut scanned = Sum::default();
        crate::features::featurize_and_embed(&msgs, &cfg, &mut x, Some((&t, &mut scanned)));
        assert_eq!(scanned.total(), direct.total());
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(WordTable::parse(b"nope").is_err());
        let mut raw = b"SFWV".to_vec();
        for v in [1u32, 2, DIM as u32] {
            raw.extend(v.to_le_bytes());
        }
        raw.extend(vec![0u8; 2 * DIM]);
        raw.extend(b"cat\ncat\n");
        assert!(WordTable::parse(&raw).is_err());
    }

    #[test]
    fn bundled_table_loads_and_embeds() {
        let t = table().unwrap();
        assert!(t.len() >= 10_000);
        let embed = |text: &str| {
            t.embed(&[Message {
                role: "user".into(),
                content: text.into(),
            }])
        };
        let a = embed("the patient was given antibiotics for the infection");
        let b = embed("the doctor prescribed medicine to treat the disease");
        let c = embed("compile the rust crate and run cargo test");
        let dot = |x: &[i8; DIM], y: &[i8; DIM]| -> i32 {
            x.iter().zip(y).map(|(&p, &q)| p as i32 * q as i32).sum()
        };
        assert!(
            dot(&a, &b) > dot(&a, &c),
            "medicine should sit nearer medicine than code"
        );
    }
}
