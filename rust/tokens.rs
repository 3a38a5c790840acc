//! Token counting: exact o200k_base / cl100k_base counts, and a one-pass estimator per
//! tokenizer family.
//!
//! Exact counts are fastokens' (a byte-level BPE with a pretoken cache; equal to tiktoken's
//! on every test text, and 4-10x faster than the bpe-openai counter this replaced, see the
//! README). The two vocabularies ship in the wheel as tiktoken's gzipped rank files
//! (`rust/data`, 2.4 MB, nothing is downloaded); a tokenizer is built from them once per
//! process, which takes about a second, so the binding starts that off the request path
//! (`preload`) when the first routing table is made.
//!
//! The estimator counts character classes (ASCII words by length, digit runs, punctuation,
//! whitespace runs, CJK and other scripts) and takes a dot product with coefficients fitted
//! against exact counts (`scripts/calibrate_estimator.py` writes `estimator_coefs.rs`).
//! Families without a public tokenizer here (Claude, Llama, Qwen, Mistral, Gemini, DeepSeek)
//! scale the nearest OpenAI estimate by a ratio constant; `is_exact()` says which.

use crate::CoreError;
use fastokens::{TiktokenConfig, Tokenizer};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

include!("estimator_coefs.rs");

/// Tokenizer families a registry entry can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    O200k,
    Cl100k,
    Claude,
    Llama,
    Qwen,
    Mistral,
    Gemini,
    DeepSeek,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::O200k,
        Family::Cl100k,
        Family::Claude,
        Family::Llama,
        Family::Qwen,
        Family::Mistral,
        Family::Gemini,
        Family::DeepSeek,
    ];

    pub fn parse(name: &str) -> Result<Family, CoreError> {
        Ok(match name {
            "o200k_base" | "o200k" | "openai" | "gpt-4o" => Family::O200k,
            "cl100k_base" | "cl100k" | "gpt-4" | "gpt-3.5" => Family::Cl100k,
            "claude" | "anthropic" => Family::Claude,
            "llama" | "meta" => Family::Llama,
            "qwen" => Family::Qwen,
            "mistral" => Family::Mistral,
            "gemini" | "google" => Family::Gemini,
            "deepseek" => Family::DeepSeek,
            _ => {
                return Err(CoreError::Tokenizer(format!(
                    "unknown tokenizer family {name:?}; use one of o200k_base, cl100k_base, \
                     claude, llama, qwen, mistral, gemini, deepseek"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::O200k => "o200k_base",
            Family::Cl100k => "cl100k_base",
            Family::Claude => "claude",
            Family::Llama => "llama",
            Family::Qwen => "qwen",
            Family::Mistral => "mistral",
            Family::Gemini => "gemini",
            Family::DeepSeek => "deepseek",
        }
    }

    /// The OpenAI encoding whose exact count this family is derived from, and the ratio.
    /// Claude's is measured (`scripts/measure_family_ratios.py`, against Anthropic's public
    /// legacy tokenizer); the others are approximate published figures. Only the two OpenAI
    /// encodings are exact, and chat() bills from provider-reported usage.
    pub fn base(self) -> (Family, f32) {
        match self {
            Family::O200k => (Family::O200k, 1.0),
            Family::Cl100k => (Family::Cl100k, 1.0),
            Family::Claude => (Family::Cl100k, 1.05),
            Family::Llama => (Family::Cl100k, 1.0), // Llama 3 uses a 128k tiktoken-style vocab
            Family::Qwen => (Family::Cl100k, 1.0),
            Family::Mistral => (Family::Cl100k, 1.12),
            Family::Gemini => (Family::O200k, 1.05),
            Family::DeepSeek => (Family::Cl100k, 1.05),
        }
    }

    pub fn is_exact(self) -> bool {
        matches!(self, Family::O200k | Family::Cl100k)
    }
}

static TABLES: [OnceLock<Tokenizer>; 2] = [OnceLock::new(), OnceLock::new()];

fn build(base: Family) -> Tokenizer {
    let (gz, config): (&[u8], _) = match base {
        Family::Cl100k => (
            include_bytes!("data/cl100k_base.tiktoken.gz"),
            TiktokenConfig::cl100k_base(),
        ),
        _ => (
            include_bytes!("data/o200k_base.tiktoken.gz"),
            TiktokenConfig::o200k_base(),
        ),
    };
    let mut ranks = String::with_capacity(4 << 20);
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut ranks)
        .expect("the embedded vocabulary is valid gzip");
    Tokenizer::from_tiktoken_str(&ranks, config).expect("the embedded vocabulary is valid")
}

/// The base encoding's tokenizer, built on first use (a second; see the module docs).
fn tokenizer(base: Family) -> &'static Tokenizer {
    TABLES[usize::from(base == Family::Cl100k)].get_or_init(|| build(base))
}

/// Set per encoding once its tokenizer is built *and* warmed (see `load`).
static WARM: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Text of every kind the pre-tokeniser and the BPE meet, counted once after a build: the
/// tokenizer builds further tables on its first encode (a few hundred milliseconds), which
/// must not land on the first request.
const WARM_TEXT: &str = "Warm up: the quick brown fox (1234567) jumps over 3.14 lazy dogs!\n\
    def f(x):\n    return {\"k\": [x, 'y']}  // é ü ß — 日本語のテキスト 한국어 текст 🙂\r\n";

/// Whether an exact count in `base` is cheap now: its tokenizer built and warmed.
pub fn is_loaded(base: Family) -> bool {
    WARM[usize::from(base == Family::Cl100k)].load(Ordering::Acquire)
}

/// Build and warm the base encoding's tokenizer now, if it is not (blocking; waits for a
/// build another thread has started).
pub fn load(base: Family) {
    if !is_loaded(base) {
        count_base(WARM_TEXT, base); // marks it warm
    }
}

/// Both tokenizers, built or waited for (blocking).
pub fn preload() {
    load(Family::O200k);
    load(Family::Cl100k);
}

/// Exact count in a base encoding. Encoding valid UTF-8 does not fail; if it ever did, the
/// byte count is returned, which no byte-level BPE count exceeds (the safe side of a limit).
fn count_base(text: &str, base: Family) -> usize {
    let n = tokenizer(base)
        .encode_ordinary(text)
        .map_or(text.len(), |ids| ids.len());
    // after one encode the tokenizer's lazy tables exist: the next count is cheap
    WARM[usize::from(base == Family::Cl100k)].store(true, Ordering::Release);
    n
}

/// Exact token count of `text` in the family's base encoding (scaled for non-OpenAI families).
pub fn count(text: &str, family: Family) -> usize {
    let (base, ratio) = family.base();
    let n = count_base(text, base);
    if ratio == 1.0 {
        n
    } else {
        (n as f32 * ratio).round() as usize
    }
}

/// Bytes per piece `count_till_limit` counts before checking the limit.
const PIECE: usize = 16 * 1024;

/// `text` in pieces of about `PIECE` bytes whose counts add up to the whole text's count:
/// each cut is between a line break and an ASCII letter or digit, where both encodings'
/// pre-tokenisers always start a new pre-token (a letter or number pre-token cannot begin
/// with a line break, and a line-break run ends at the first non-space). Text with no
/// such place is one piece.
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let b = rest.as_bytes();
        let cut = (PIECE..b.len().saturating_sub(1))
            .find(|&i| b[i] == b'\n' && b[i + 1].is_ascii_alphanumeric())
            .map_or(b.len(), |i| i + 1);
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// Exact count that stops early: `None` as soon as the count would exceed `limit`. Counts
/// piece by piece (see `pieces`), so a long text over a small limit costs about the limit.
pub fn count_till_limit(text: &str, family: Family, limit: usize) -> Option<usize> {
    let (base, ratio) = family.base();
    // one base token of slack: a scaled count rounds, so base_limit + 1 may still fit
    let base_limit = (limit as f32 / ratio).floor() as usize + 1;
    let mut n = 0usize;
    for piece in pieces(text) {
        n += count_base(piece, base);
        if n > base_limit {
            return None;
        }
    }
    let scaled = (n as f32 * ratio).round() as usize;
    (scaled <= limit).then_some(scaled)
}

/// Tokens a chat request adds around its messages (OpenAI's documented accounting:
/// 3 per message plus 3 to prime the reply; the role name counts as one token).
pub const PER_MESSAGE_OVERHEAD: usize = 4;
pub const PER_REQUEST_OVERHEAD: usize = 3;

/// Character-class counts gathered in one pass; the estimator's inputs, and what says how
/// far the estimate can be trusted.
#[derive(Clone, Debug, Default)]
pub struct CharCounts {
    pub counts: [f32; N_EST],
    /// Bytes of text: a hard upper bound on byte-level BPE tokens.
    pub bytes: u32,
    /// Letters beyond the 24th in ASCII letter runs longer than 24 (DNA, base64, "xxxx…").
    pub long_run_chars: u32,
    /// Non-ASCII characters.
    pub non_ascii: u32,
}

impl CharCounts {
    pub fn add(&mut self, other: &CharCounts) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.bytes += other.bytes;
        self.long_run_chars += other.long_run_chars;
        self.non_ascii += other.non_ascii;
    }

    /// Text of the kind the estimator was fitted on (mostly ASCII words, digits, punctuation
    /// and space; no long letter runs, few mixed-case words, not mostly long runs of mixed
    /// punctuation): its estimate is within
    /// `MARGIN` of the exact count. Anything else may be off by any factor (1 MB of "x" is
    /// 125,000 tokens; base64, hex or rare scripts tokenise unlike prose).
    pub fn fitted(&self) -> bool {
        let words: f32 = self.counts[est::WORD_LEN..est::WORD_LEN + 15].iter().sum();
        let (punct, runs) = (self.counts[est::PUNCT], self.counts[est::PUNCT_RUNS]);
        let punct_soup = punct > 0.35 * self.bytes as f32 && punct > 3.0 * runs;
        // mostly line breaks or indentation: tokenisers merge runs the estimator counts apart
        let blank = self.counts[est::NEWLINES] + self.counts[est::SPACE_RUN_CHARS];
        let layout = blank > 0.25 * self.bytes as f32;
        self.long_run_chars == 0
            && !punct_soup
            && !layout
            && self.non_ascii as f32 <= 0.05 * self.bytes as f32
            && self.counts[est::WORD_CAPITALISED] <= 0.25 * words
    }
}

/// The estimate of fitted text never exceeds the exact count by more than this factor
/// (plus `SLACK`): a prompt whose estimate is that far over a limit is refused without a
/// count. (Under-estimates have no such bound: random lower-case words count 3x their
/// estimate; the upper bound is the byte count.)
pub const OVER_FACTOR: f32 = 1.5;
/// ... plus this many tokens: on a few words, one token is a large share.
pub const SLACK: f32 = 4.0;
/// Estimated tokens per letter beyond the 24th of a long letter run (random letters are
/// ~3 per token; a repeated letter is ~8: the estimate leans high, never 1 token for a MB).
const LONG_RUN_TOKENS_PER_CHAR: f32 = 0.3;

/// Index of each estimator input in `CharCounts.counts`.
pub mod est {
    /// ASCII letter runs of length 1..=12 (index = len-1), then 13..16, 17..24, 25+.
    pub const WORD_LEN: usize = 0; // 15 slots
    pub const WORD_CAPITALISED: usize = 15; // words with an upper-case letter after the first
    pub const DIGIT_GROUPS: usize = 16; // sum of ceil(run/3)
    pub const PUNCT: usize = 17; // ASCII punctuation characters
    pub const PUNCT_RUNS: usize = 18; // runs of ASCII punctuation
    pub const NEWLINES: usize = 19;
    pub const SPACE_RUNS: usize = 20; // runs of 2+ spaces/tabs (indentation)
    pub const HAN: usize = 21; // CJK ideographs
    pub const KANA: usize = 22; // Hiragana, Katakana
    pub const HANGUL: usize = 23;
    pub const CJK_PUNCT: usize = 24; // CJK symbols and full-width forms
    pub const OTHER_LETTERS: usize = 25; // non-ASCII alphabetic (Cyrillic, Greek, Arabic, …)
    pub const OTHER_BYTES: usize = 26; // other non-ASCII chars (emoji, symbols, box drawing)
    pub const SPACE_RUN_CHARS: usize = 27; // characters inside runs of 2+ spaces/tabs
    pub const BIAS: usize = 28; // one per text
}
pub const N_EST: usize = 29;

/// One ASCII letter run, as `scan` found it: what the estimator and the featurizer read of
/// a word, worked out once, eight or sixteen bytes at a time (see `letter_bytes`).
pub struct Word<'a> {
    /// The text from the word on, so a reader can look at what follows it.
    pub rest: &'a [u8],
    pub len: usize,
    /// First token on its line.
    pub line_start: bool,
    /// Its first 32 bytes lower-cased and zero-padded, as two little-endian halves (bytes
    /// 0..16, 16..32; the second is 0 for a word of at most 16 letters): the keyword and
    /// embedding tables' key.
    pub key: [u128; 2],
    /// Upper-case letters among its first 32 bytes (the featurizer never looked further).
    pub upper: usize,
}

impl Word<'_> {
    /// The lower-cased word, at most its first 32 bytes.
    pub fn lower(&self) -> ([u8; 32], usize) {
        let mut buf = [0u8; 32];
        buf[..16].copy_from_slice(&self.key[0].to_le_bytes());
        buf[16..].copy_from_slice(&self.key[1].to_le_bytes());
        (buf, self.len.min(32))
    }
}

/// What the featurizer needs from the same pass that gathers the estimator's counts.
/// Every method has an empty default, so the estimator alone pays for nothing else.
pub trait Visitor {
    fn word(&mut self, _w: &Word<'_>) {}
    fn digits(&mut self, _len: usize) {}
    /// One ASCII punctuation or control byte; `rest` starts at it.
    fn punct(&mut self, _rest: &[u8], _line_start: bool) {}
    fn newline(&mut self) {}
    fn non_ascii(&mut self, _ch: char, _bytes: &[u8]) {}
}

impl Visitor for () {}

/// A byte in every lane of a u64.
const fn lanes(b: u8) -> u64 {
    u64::from_le_bytes([b; 8])
}
const MSB: u64 = lanes(0x80);

/// 0x80 in every byte of `w` that is an ASCII letter, 0 in the others: byte-wise range
/// checks in one register ("SWAR"), so a word's length needs no loop over its letters (that
/// loop's exit was mispredicted at most word ends, and it was most of the cost of scanning
/// prose). Every lane is at most 0x7F before an add of at most 0x1F: no carry crosses lanes.
#[inline]
fn letter_bytes(w: u64) -> u64 {
    let x = (w | lanes(0x20)) & lanes(0x7F); // folded to lower case, high bit dropped
    let ge_a = x.wrapping_add(lanes(0x80 - b'a')); // bit 7 set: x >= 'a'
    let gt_z = x.wrapping_add(lanes(0x80 - b'z' - 1)); // bit 7 set: x > 'z'
    ge_a & !gt_z & !w & MSB // and not a non-ASCII byte
}

/// Upper-case letters among the bytes `keep` selects of `w` (all letters): a letter is
/// upper case when its 0x20 bit is clear, which `w << 2` moves to the lane's bit 7.
#[inline]
fn upper_bytes(w: u64, keep: u64) -> u64 {
    !(w << 2) & MSB & keep
}

/// How many lanes of `f` are flagged (0x80): a multiply adds them up (baseline x86-64 has
/// no popcount instruction, and `count_ones` is a dozen operations without it).
#[inline]
fn flagged(f: u64) -> usize {
    ((f >> 7).wrapping_mul(lanes(1)) >> 56) as usize
}

/// 8 bytes of `b` from `i` as a little-endian u64, zeros past the end.
#[inline]
fn load8(b: &[u8], i: usize) -> u64 {
    match b.get(i..i + 8) {
        Some(chunk) => u64::from_le_bytes(chunk.try_into().unwrap_or_default()),
        None => {
            let rest = b.get(i..).unwrap_or_default();
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(buf)
        }
    }
}

/// Letters in the leading run of `w`'s lanes, 0..=8 (8: the run may go on).
#[inline]
fn run_len(w: u64) -> usize {
    // (!letters & MSB) is 0 when all 8 lanes are letters: trailing_zeros is then 64.
    ((!letter_bytes(w) & MSB).trailing_zeros() / 8) as usize
}

/// The letter run at `b[i]` (a letter): (length, `Word::key`, `Word::upper`, whether a
/// letter after the first is upper case). Most words fit in one 8-byte load.
#[inline]
fn letter_run(b: &[u8], i: usize) -> (usize, [u128; 2], usize, bool) {
    let w = load8(b, i);
    let run = run_len(w);
    if run < 8 {
        let keep = u64::MAX >> (64 - 8 * run); // the run's bytes (run >= 1)
        let up = upper_bytes(w, keep);
        let key = ((w | lanes(0x20)) & keep) as u128;
        return (run, [key, 0], flagged(up), up >> 8 != 0);
    }
    long_letter_run(b, i)
}

/// `letter_run` for a run of 8 letters or more, 8 bytes at a time (kept out of line, so
/// the usual short word's path stays small).
#[inline(never)]
fn long_letter_run(b: &[u8], i: usize) -> (usize, [u128; 2], usize, bool) {
    let (mut len, mut key, mut upper, mut caps_inside) = (0, [0u128; 2], 0, false);
    loop {
        let w = load8(b, i + len);
        let run = run_len(w);
        if run == 0 {
            break;
        }
        let keep = u64::MAX >> (64 - 8 * run);
        let up = upper_bytes(w, keep);
        caps_inside |= if len == 0 { up >> 8 } else { up } != 0;
        if len < 32 {
            // `len` is a multiple of 8 here: this chunk is bytes len..len+8 of the key
            key[len / 16] |= (((w | lanes(0x20)) & keep) as u128) << (8 * (len % 16));
            upper += flagged(up);
        }
        len += run;
        if run < 8 {
            break;
        }
    }
    (len, key, upper, caps_inside)
}

/// `CharCounts` slot (after `est::WORD_LEN`) of a letter run of each length, 25+ last.
const WORD_SLOT: [u8; 26] = [
    0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14,
];

/// Gather `CharCounts` for `text` (one pass over the bytes, no allocation).
pub fn char_counts(text: &str) -> CharCounts {
    scan(text, &mut ())
}

/// The one pass over a text: estimator counts, plus callbacks for the featurizer.
pub fn scan<V: Visitor>(text: &str, v: &mut V) -> CharCounts {
    // Integer counters: f32 `+=` on the same slots would chain their latencies.
    let mut c = [0u32; N_EST];
    let mut long_run = 0u32;
    let mut non_ascii = 0u32;
    let b = text.as_bytes();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let x = b[i];
        if x.is_ascii_alphabetic() {
            let (len, key, upper, caps_inside) = letter_run(b, i);
            long_run += len.saturating_sub(24) as u32;
            c[est::WORD_LEN + WORD_SLOT[len.min(25)] as usize] += 1;
            c[est::WORD_CAPITALISED] += caps_inside as u32;
            v.word(&Word {
                rest: &b[i..],
                len,
                line_start,
                key,
                upper,
            });
            i += len;
            line_start = false;
            // The usual separator, one space before the next word: stepped over here rather
            // than by another turn of the dispatch below (what its single-space case does).
            if b.get(i) == Some(&b' ') && b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
                i += 1;
            }
        } else if x.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            c[est::DIGIT_GROUPS] += (i - start).div_ceil(3) as u32;
            v.digits(i - start);
            line_start = false;
        } else if x == b'\n' {
            c[est::NEWLINES] += 1;
            v.newline();
            line_start = true;
            i += 1;
        } else if x == b' ' && b.get(i + 1).is_some_and(|&c| c != b' ' && c != b'\t') {
            i += 1; // the usual single space between words
        } else if x == b' ' || x == b'\t' || x == b'\r' {
            let start = i;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if i - start >= 2 {
                c[est::SPACE_RUNS] += 1;
                c[est::SPACE_RUN_CHARS] += (i - start) as u32;
            }
            if i == start {
                i += 1; // lone \r
            }
        } else if x.is_ascii() {
            let start = i;
            loop {
                v.punct(&b[i..], line_start);
                // Bullets and "(A)" options keep the line start for what follows them.
                line_start &= matches!(b[i], b'(' | b'-' | b'*');
                i += 1;
                if i >= b.len() || !b[i].is_ascii_punctuation() {
                    break;
                }
            }
            c[est::PUNCT] += (i - start) as u32;
            c[est::PUNCT_RUNS] += 1;
        } else {
            // Non-ASCII: decode one char (text is valid UTF-8).
            let ch = text[i..].chars().next().unwrap_or('\u{FFFD}');
            let n = ch.len_utf8();
            let cp = ch as u32;
            if matches!(cp, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
            {
                c[est::HAN] += 1;
            } else if matches!(cp, 0x3040..=0x30FF | 0xFF66..=0xFF9F) {
                c[est::KANA] += 1;
            } else if matches!(cp, 0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F) {
                c[est::HANGUL] += 1;
            } else if matches!(cp, 0x3000..=0x303F | 0xFF00..=0xFF65 | 0xFFE0..=0xFFEF) {
                c[est::CJK_PUNCT] += 1;
            } else if ch.is_alphabetic() {
                c[est::OTHER_LETTERS] += 1;
            } else {
                c[est::OTHER_BYTES] += 1;
            }
            v.non_ascii(ch, &b[i..i + n]);
            non_ascii += 1;
            line_start = false;
            i += n;
        }
    }
    c[est::BIAS] = 1;
    CharCounts {
        counts: c.map(|v| v as f32),
        bytes: u32::try_from(b.len()).unwrap_or(u32::MAX),
        long_run_chars: long_run,
        non_ascii,
    }
}

pub fn is_cjk(ch: char) -> bool {
    matches!(ch as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF
        | 0xF900..=0xFAFF | 0xFF66..=0xFF9F | 0x20000..=0x2FA1F)
}

/// Estimated tokens from counts already gathered (the hot path calls this once per family).
pub fn estimate_from_counts(c: &CharCounts, family: Family) -> f32 {
    let (base, ratio) = family.base();
    let coefs = match base {
        Family::Cl100k => &CL100K_COEFS,
        _ => &O200K_COEFS,
    };
    let dot: f32 = c
        .counts
        .iter()
        .zip(coefs.iter())
        .map(|(a, b)| a * b)
        .sum::<f32>()
        + c.long_run_chars as f32 * LONG_RUN_TOKENS_PER_CHAR;
    if c.counts.iter().take(N_EST - 1).all(|&v| v == 0.0) {
        return 0.0;
    }
    (dot * ratio).max(1.0)
}

/// (estimate, lower, upper) for the exact count in `family` of text with counts `c`.
/// Upper: the byte count, which no byte-level BPE count can exceed (scaled like the
/// family's exact count). Lower: the estimate over `OVER_FACTOR` for fitted text, else 0.
pub fn bounds_from_counts(c: &CharCounts, family: Family) -> (f32, f32, f32) {
    let est = estimate_from_counts(c, family);
    let hi = (c.bytes as f32 * family.base().1).ceil().max(est);
    let lo = if c.fitted() {
        (est / OVER_FACTOR - SLACK).max(0.0)
    } else {
        0.0
    };
    (est, lo, hi)
}

pub fn estimate(text: &str, family: Family) -> f32 {
    estimate_from_counts(&char_counts(text), family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_counts_known_values() {
        assert_eq!(count("hello world", Family::O200k), 2);
        assert_eq!(count("hello world", Family::Cl100k), 2);
        assert_eq!(count("", Family::O200k), 0);
    }

    #[test]
    fn till_limit_stops() {
        let text = "word ".repeat(1000);
        assert_eq!(count_till_limit(&text, Family::O200k, 10), None);
        let n = count(&text, Family::O200k);
        assert_eq!(count_till_limit(&text, Family::O200k, n), Some(n));
    }

    #[test]
    fn estimate_close_on_prose() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        let exact = count(&text, Family::O200k) as f32;
        let est = estimate(&text, Family::O200k);
        assert!(
            (est - exact).abs() / exact < 0.15,
            "est {est} exact {exact}"
        );
    }

    #[test]
    fn long_runs_are_proportional_and_never_fitted() {
        let text = "x".repeat(1 << 20);
        let c = char_counts(&text);
        assert!(!c.fitted());
        let exact = count(&text, Family::O200k) as f32;
        let (_, lo, hi) = bounds_from_counts(&c, Family::O200k);
        assert!(lo <= exact && exact <= hi, "{lo} {exact} {hi}");
        assert!(estimate(&text, Family::O200k) > 100_000.0);
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        assert!(char_counts(&prose).fitted());
    }

    #[test]
    fn pieces_add_up_to_the_whole() {
        let line = "fn main() {\n    let x = \"héllo  wörld\";  // 日本語\n}\nThe end. 123\r\n";
        let text = line.repeat(3000); // about 170 KB: several pieces
        assert!(pieces(&text).count() > 2);
        assert_eq!(pieces(&text).collect::<String>(), text);
        for f in [Family::O200k, Family::Cl100k] {
            let whole = count(&text, f);
            let summed: usize = pieces(&text).map(|p| count(p, f)).sum();
            assert_eq!(summed, whole);
            assert_eq!(count_till_limit(&text, f, whole), Some(whole));
            assert_eq!(count_till_limit(&text, f, whole - 1), None);
        }
    }

    #[test]
    fn till_limit_agrees_with_count_for_scaled_families() {
        for text in [
            "hello world ".repeat(4),
            "x".repeat(37),
            "The cat sat.\n".repeat(30),
        ] {
            for f in Family::ALL {
                let n = count(&text, f);
                assert_eq!(count_till_limit(&text, f, n), Some(n), "{f:?} {n}");
                assert_eq!(
                    count_till_limit(&text, f, n.saturating_sub(1)),
                    None,
                    "{f:?}"
                );
            }
        }
    }

    #[test]
    fn letter_runs_match_a_byte_loop() {
        // Every length around the 8-byte loads and the 32-byte key, every case pattern,
        // at the end of the text and before non-letters (including non-ASCII bytes).
        for len in 1..=40 {
            for tail in ["", " x", "1", "é", "[", "@", "`", "{"] {
                for caps in [0usize, 1, 3, 7, 8, 9, 31, 32, 33] {
                    let word: String = (0..len)
                        .map(|k| {
                            if k == caps {
                                'Q'
                            } else {
                                (b'a' + (k % 26) as u8) as char
                            }
                        })
                        .collect();
                    let text = format!("{word}{tail}");
                    let b = text.as_bytes();
                    let (n, key, upper, caps_inside) = letter_run(b, 0);
                    assert_eq!(n, len, "{text:?}");
                    let mut want = [0u8; 32];
                    for (w, c) in want.iter_mut().zip(&b[..len.min(32)]) {
                        *w = c.to_ascii_lowercase();
                    }
                    let half = |r: &[u8]| u128::from_le_bytes(r.try_into().unwrap());
                    assert_eq!(key, [half(&want[..16]), half(&want[16..])], "{text:?}");
                    let up = |r: &[u8]| r.iter().filter(|c| c.is_ascii_uppercase()).count();
                    assert_eq!(upper, up(&b[..len.min(32)]), "{text:?}");
                    assert_eq!(caps_inside, up(&b[1..len]) > 0, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn family_names_round_trip() {
        for f in Family::ALL {
            assert_eq!(Family::parse(f.name()).unwrap(), f);
        }
        assert!(Family::parse("nope").is_err());
    }
}
