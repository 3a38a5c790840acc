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

pub struct WordTable {
    keys: Vec<u64>, // open addressing: a word's hash (never 0), 0 = empty
    rows_of: Vec<u32>,
    mask: usize,
    rows: Vec<i8>,
    words: usize,
}

#[inline]
fn hash(w: &[u8]) -> u64 {
    // FNV-1a with a final multiply mix: cheap on short words, and 64 bits make a collision
    // between an unknown word and one of 20k table words negligible (keys are not stored).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in w {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h ^ (h >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
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
        let rows: Vec<i8> = raw[16..body].iter().map(|&b| b as i8).collect();
        let words: Vec<&[u8]> = raw[body..]
            .split(|&b| b == b'\n')
            .filter(|w| !w.is_empty())
            .collect();
        if words.len() != n {
            return Err(bad(&format!("{} words for {n} rows", words.len())));
        }
        let cap = (n * 2).next_power_of_two().max(2);
        let mut t = WordTable {
            keys: vec![0; cap],
            rows_of: vec![0; cap],
            mask: cap - 1,
            rows,
            words: n,
        };
        for (i, w) in words.iter().enumerate() {
            let h = hash(w);
            let mut k = h as usize & t.mask;
            while t.keys[k] != 0 {
                if t.keys[k] == h {
                    return Err(bad("a word appears twice"));
                }
                k = (k + 1) & t.mask;
            }
            t.keys[k] = h;
            t.rows_of[k] = i as u32;
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.words
    }

    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// Add the row of `lower` (an already lower-cased word) to `acc`; false if unknown.
    #[inline]
    pub fn add(&self, lower: &[u8], acc: &mut Sum) -> bool {
        if lower.len() > MAX_WORD {
            return false;
        }
        let h = hash(lower);
        let mut k = h as usize & self.mask;
        loop {
            let key = self.keys[k];
            if key == h {
                let r = self.rows_of[k] as usize * DIM;
                acc.add(&self.rows[r..r + DIM]);
                return true;
            }
            if key == 0 {
                return false;
            }
            k = (k + 1) & self.mask;
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
        let mut buf = [0u8; MAX_WORD];
        let (mut n, mut hits) = (0usize, 0usize);
        for &c in text.as_bytes().iter().chain(std::iter::once(&b' ')) {
            if c.is_ascii_alphabetic() {
                if n < MAX_WORD {
                    buf[n] = c | 0x20;
                }
                n += 1;
            } else if n > 0 {
                if n <= MAX_WORD {
                    hits += self.add(&buf[..n], acc) as usize;
                }
                n = 0;
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
