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
    /// A tokenizer none of the above is: o200k_base's count with a margin, estimated.
    Other,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::O200k,
        Family::Cl100k,
        Family::Claude,
        Family::Llama,
        Family::Qwen,
        Family::Mistral,
        Family::Gemini,
        Family::DeepSeek,
        Family::Other,
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
            "other" => Family::Other,
            _ => {
                return Err(CoreError::Tokenizer(format!(
                    "unknown tokenizer family {name:?}; use one of o200k_base, cl100k_base, \
                     claude, llama, qwen, mistral, gemini, deepseek, other (any other \
                     tokenizer: estimated)"
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
            Family::Other => "other",
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
            // no published ratio: o200k's count with a margin (a model's own vocabulary of
            // 130-150k tokens, as xAI's and Zhipu's, had been called exact as o200k_base)
            Family::Other => (Family::O200k, 1.1),
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
    scaled(count_base(text, base), ratio)
}

/// A base-encoding count in a family's tokens: as it is at a ratio of 1 (an f32 holds whole
/// numbers only to 2**24: 16,777,217 tokens had read 16,777,216), else scaled in f64.
fn scaled(n: usize, ratio: f32) -> usize {
    if ratio == 1.0 {
        n
    } else {
        (n as f64 * f64::from(ratio)).round() as usize
    }
}

/// Bytes per piece `count_on` counts before checking the limit.
const PIECE: usize = 16 * 1024;
/// With `force`, `count_on` cuts a stretch this long that has no exact cut (`is_cut`). The
/// BPE's cost grows with a pre-token's length squared (one line of "x", punctuation or
/// spaces is one pre-token: 64 KB costs 180 ns a byte, 4 KB 10 ns), so an uncut stretch
/// would make a count's cost superlinear in the text, whatever the limit.
const STRETCH: usize = 4 * 1024;
/// How far one forced cut can move the sum of the pieces' counts from the whole text's
/// count, in base tokens. A cut changes the pre-tokens only next to it: the pre-token it
/// splits becomes two (the next one may take a prefix character, or a whitespace run its
/// last space), and the BPE of a split pre-token differs from the whole one's around the
/// cut; every pre-token further away is the same and encodes the same. This is measured, not
/// proved: cuts at every position of long runs and random strings of letters, digits,
/// punctuation, whitespace, CJK and emoji moved the sum by -2..=+3
/// (`forced_cuts_stay_within_their_slack`); 8 leaves room for texts not tried.
pub const FORCED_CUT_SLACK: usize = 8;
/// The longest token of either encoding, in bytes (128 spaces): no count is below
/// bytes / MAX_TOKEN_BYTES.
pub const MAX_TOKEN_BYTES: usize = 128;

/// Whether both encodings' pre-tokenisers start a new pre-token at byte `i` of `text`
/// (0 < i < len), so the counts of `text[..i]` and `text[i..]` add up to the count of
/// `text` (pre-tokens are encoded independently, and the patterns look at most one
/// character ahead, only in whitespace runs). The patterns are tiktoken's; the cases:
/// - after a line break, before a character that is not whitespace or `/`: the pre-token
///   holding the break (a break run, or punctuation with its trailing breaks, and o200k
///   lets `/` follow those) cannot go on, and no pre-token begins with a break and goes on
///   past it into a letter, number or punctuation;
/// - before a space after a non-space: only whitespace-run pre-tokens hold a space other
///   than as their first character;
/// - after an ASCII letter, before an ASCII character other than a letter or `'` (o200k's
///   contractions follow a word), or after an ASCII digit, before an ASCII non-digit: word
///   and number pre-tokens end at the last letter or digit, and no other holds one.
fn is_cut(text: &str, i: usize) -> bool {
    let b = text.as_bytes();
    let (prev, next) = (b[i - 1], b[i]);
    let blank = |c: char| c.is_whitespace() || c.is_control();
    if prev == b'\n' {
        text[i..]
            .chars()
            .next()
            .is_some_and(|c| !blank(c) && c != '/')
    } else if next == b' ' {
        text[..i].chars().next_back().is_some_and(|c| !blank(c))
    } else if prev.is_ascii_alphabetic() {
        next.is_ascii() && !next.is_ascii_alphabetic() && next != b'\''
    } else {
        prev.is_ascii_digit() && next.is_ascii() && !next.is_ascii_digit()
    }
}

/// Length of the piece at the start of `text`, and whether it ends at a forced cut: up to
/// a cut (`is_cut`) at or after `PIECE` bytes (the whole text if there is none). With
/// `force`, a stretch of `STRETCH` bytes without a cut ends the piece at the last cut
/// before it, or, if the piece has none, is cut at a character boundary (see
/// `FORCED_CUT_SLACK`).
fn piece_len(text: &str, force: bool) -> (usize, bool) {
    let n = text.len();
    let cut_in = |mut range: std::ops::Range<usize>| range.find(|&i| is_cut(text, i));
    if !force {
        return (cut_in(PIECE..n).unwrap_or(n), false);
    }
    // The next cut is looked for from half a stretch after the last one (any cut in the
    // second half keeps every gap under a stretch), so prose costs a few bytes' look per
    // 2 KB; only when that half has none is the first half searched, from its end.
    let mut last = 0;
    while last < PIECE && last + STRETCH < n {
        let half = last + STRETCH / 2;
        let found = cut_in(half..last + STRETCH)
            .or_else(|| (last + 1..half).rev().find(|&i| is_cut(text, i)));
        match found {
            Some(c) => last = c,
            None if last > 0 => return (last, false),
            None => {
                if let Some(at) = digit_chunk_end(text, STRETCH) {
                    return (at, false);
                }
                // a boundary is among the 4 bytes up to STRETCH
                let at = (STRETCH - 3..=STRETCH)
                    .rev()
                    .find(|&j| text.is_char_boundary(j));
                return (at.unwrap_or(STRETCH), true);
            }
        }
    }
    (if last >= PIECE { last } else { n }, false)
}

/// Inside a run of numeric characters (Unicode N, what both encodings' `\p{N}{1,3}` takes:
/// ASCII digits, and "०७२" or "００１" as much) that goes on past byte `i`: the last end of a
/// 3-character number pre-token at or before `i`. Both encodings cut a number run into
/// pre-tokens of 3 characters from its start, so a cut elsewhere in it regroups every digit
/// after it: a forced cut in 6,000 Devanagari digits had counted them as 2,911 tokens, not
/// 6,001, and routed the prompt past a window and a cost cap. The run's start is where the
/// numeric characters begin in `text` (a piece starts at an exact cut, or at such an end).
fn digit_chunk_end(text: &str, i: usize) -> Option<usize> {
    let mut j = i.min(text.len());
    while !text.is_char_boundary(j) {
        j -= 1;
    }
    let (before, after) = (text[..j].chars().next_back()?, text[j..].chars().next()?);
    if !(before.is_numeric() && after.is_numeric()) {
        return None;
    }
    let run: Vec<usize> = text[..j]
        .char_indices()
        .rev()
        .take_while(|&(_, c)| c.is_numeric())
        .map(|(k, _)| k)
        .collect();
    // `run`: the offsets of the run's characters before `j`, last first; the end of its
    // whole groups of 3 is `j`, or the offset of the character after them
    let (n, whole) = (run.len(), run.len() / 3 * 3);
    let end = if whole == n { j } else { run[n - 1 - whole] };
    (end > 0).then_some(end)
}

/// A count made piece by piece: `tokens` is the sum of the pieces' exact counts, and the
/// whole text's count is within `slack` of it (0 unless a stretch was cut by force).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub tokens: usize,
    pub slack: usize,
}

impl Tally {
    /// Whether the count may exceed `limit` (the safe side when the slack straddles it).
    pub fn exceeds(&self, limit: usize) -> bool {
        self.tokens + self.slack > limit
    }
}

/// Count `text[*at..]` in `base` into `tally`, piece by piece, until the text ends or the
/// tally exceeds `limit`; `*at` is left where it stopped, so a later call with a higher
/// limit goes on from there. A piece costs about its length (`STRETCH` bounds a pre-token's
/// length when `force` is set; otherwise text without cuts is one piece), so a long text
/// over a small limit costs about the limit.
pub fn count_on(
    text: &str,
    at: &mut usize,
    base: Family,
    force: bool,
    tally: &mut Tally,
    limit: usize,
) {
    while *at < text.len() && !tally.exceeds(limit) {
        let rest = &text[*at..];
        let (len, forced) = piece_len(rest, force);
        tally.tokens += count_base(&rest[..len], base);
        tally.slack += usize::from(forced) * FORCED_CUT_SLACK;
        *at += len;
    }
}

/// Exact count that stops early: `None` as soon as the count would exceed `limit`. Counts
/// piece by piece (see `count_on`), without forced cuts: text with no cut is counted whole,
/// unless it is longer than `limit` tokens of `MAX_TOKEN_BYTES` each.
pub fn count_till_limit(text: &str, family: Family, limit: usize) -> Option<usize> {
    let (base, ratio) = family.base();
    // one base token of slack: a scaled count rounds, so base_limit + 1 may still fit
    // (saturating: a limit near usize::MAX had wrapped to 0, and every text was over it)
    let base_limit = ((limit as f64 / f64::from(ratio)).floor() as usize).saturating_add(1);
    if text.len() > base_limit.saturating_mul(MAX_TOKEN_BYTES) {
        return None;
    }
    let mut tally = Tally::default();
    count_on(text, &mut 0, base, false, &mut tally, base_limit);
    if tally.exceeds(base_limit) {
        return None;
    }
    let scaled = scaled(tally.tokens, ratio);
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

    /// A count in the base encoding no exact count is below: the larger of
    /// - bytes / `MAX_TOKEN_BYTES` (the tokens spell the text's bytes), and
    /// - distinct pre-tokens, one token each at least: every ASCII letter run lies in a word
    ///   pre-token (o200k's and cl100k's patterns hold letters only in words and
    ///   contractions) and every digit run of length d in ceil(d/3) number pre-tokens. Two runs
    ///   share a pre-token only across a non-ASCII letter or mark (`caféteria`), or a
    ///   contraction's apostrophe (`don't` in o200k); each joining takes one such character
    ///   from between them, so non-ASCII characters and ASCII punctuation are taken off.
    ///
    /// The estimate is no bound: it is fitted on prose, and one-token long words
    /// ("understanding relationships") and digit runs count well below it.
    pub fn lower_bound(&self) -> f32 {
        let runs: f32 = self.counts[est::WORD_LEN..est::WORD_LEN + 15].iter().sum();
        let pre =
            runs + self.counts[est::DIGIT_GROUPS] - self.non_ascii as f32 - self.counts[est::PUNCT];
        let by_bytes = self.bytes.div_ceil(MAX_TOKEN_BYTES as u32) as f32;
        pre.max(by_bytes)
    }
}

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
    // (`first_chunk` of the rest: one length check, where `get(i..i + 8)` had three)
    match b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        Some(chunk) => u64::from_le_bytes(*chunk),
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
/// letter after the first is upper case), counted in `by_len` (by length, 25 and more in
/// the last) and `long_run` (its letters beyond the 24th). Most words fit in one 8-byte
/// load.
// Always inlined: as a call (which its 8-15 letter branch had made it) it cost more than it
// saved. The run is counted in each branch, where its length's range is known: counted
// after them, every word had paid for the clamp to 25 and the test for more than 24
// letters (~5% of a 4 KB prompt's `route()` instructions, `benches/instructions.py route`).
#[inline(always)]
fn letter_run(
    b: &[u8],
    i: usize,
    by_len: &mut [u32; 26],
    long_run: &mut u32,
) -> (usize, [u128; 2], usize, bool) {
    let w = load8(b, i);
    let run = run_len(w);
    if run < 8 {
        let keep = u64::MAX >> (64 - 8 * run); // the run's bytes (run >= 1)
        let up = upper_bytes(w, keep);
        let key = ((w | lanes(0x20)) & keep) as u128;
        by_len[run] += 1;
        return (run, [key, 0], flagged(up), up >> 8 != 0);
    }
    // 8 to 15 letters (a fifth of the words of prose) end in the next 8 bytes: taken here,
    // where the loop below had cost them a call and ~150 instructions.
    let w1 = load8(b, i + 8);
    let run1 = run_len(w1);
    if run1 < 8 {
        let keep1 = !(u64::MAX << (8 * run1)); // the run's bytes in w1 (none for run1 = 0)
        let (up, up1) = (upper_bytes(w, u64::MAX), upper_bytes(w1, keep1));
        let key = ((w | lanes(0x20)) as u128) | ((((w1 | lanes(0x20)) & keep1) as u128) << 64);
        let upper = flagged(up) + flagged(up1);
        by_len[8 + run1] += 1;
        return (8 + run1, [key, 0], upper, (up >> 8) | up1 != 0);
    }
    let run = long_letter_run(b, i);
    if run.0 > 24 {
        *long_run += (run.0 - 24) as u32;
    }
    by_len[run.0.min(25)] += 1;
    run
}

/// `letter_run` for a run of 16 letters or more, 8 bytes at a time (kept out of line, so
/// the usual word's path stays small).
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
pub const WORD_SLOT: [u8; 26] = [
    0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14,
];
/// The first slot of runs of 10 letters or more (each slot holds runs of one length range).
pub const LONG_WORD_SLOT: usize = WORD_SLOT[10] as usize;
const _: () = assert!(WORD_SLOT[9] as usize == LONG_WORD_SLOT - 1);

/// One word of `scan`: the letter run at `b[i]` counted and visited; its length.
#[inline(always)]
fn take_word<V: Visitor>(
    b: &[u8],
    i: usize,
    line_start: bool,
    v: &mut V,
    by_len: &mut [u32; 26],
    caps: &mut u32,
    long_run: &mut u32,
) -> usize {
    let (len, key, upper, caps_inside) = letter_run(b, i, by_len, long_run);
    *caps += caps_inside as u32;
    v.word(&Word {
        rest: &b[i..],
        len,
        line_start,
        key,
        upper,
    });
    len
}

/// Gather `CharCounts` for `text` (one pass over the bytes, no allocation).
pub fn char_counts(text: &str) -> CharCounts {
    scan(text, &mut ())
}

/// The one pass over a text: estimator counts, plus callbacks for the featurizer.
pub fn scan<V: Visitor>(text: &str, v: &mut V) -> CharCounts {
    // Integer counters: f32 `+=` on the same slots would chain their latencies.
    let mut c = [0u32; N_EST];
    // Letter runs by length (25: 25 and more), put in their slots at the end: a slot per
    // word would be one more table read.
    let mut by_len = [0u32; 26];
    let mut long_run = 0u32;
    let mut non_ascii = 0u32;
    let b = text.as_bytes();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let x = b[i];
        if x.is_ascii_alphabetic() {
            let mut caps = 0;
            i += take_word(b, i, line_start, v, &mut by_len, &mut caps, &mut long_run);
            line_start = false;
            // Words with one space between them (most of prose) are taken in this loop,
            // without another turn of the dispatch below for each. None of them starts a
            // line: with the first word taken before it, the inlined visitor's line-start
            // test is compiled out of the loop, and the loop's state stays in registers
            // (one loop for both had been ~10% of a 4 KB prompt's `route()` instructions,
            // `benches/instructions.py route`).
            loop {
                while b.get(i) == Some(&b' ') && b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
                    i += 1 + take_word(b, i + 1, false, v, &mut by_len, &mut caps, &mut long_run);
                }
                // A mark, a space and a word (", " and ". " in prose), and a line break and
                // a word (wrapped prose), stay in this loop too: counted and visited as the
                // dispatch below would (a punctuation run of one, not at a line start, and
                // the usual single space; a line break, and a word that starts a line).
                // Through the dispatch, each had cost a turn for the mark or the break, one
                // for the space and the loop's entry: ~3% of a 4 KB prompt's `route()`.
                let next_is = |k: usize, p: fn(&u8) -> bool| b.get(i + k).is_some_and(p);
                if next_is(0, u8::is_ascii_punctuation)
                    && b.get(i + 1) == Some(&b' ')
                    && next_is(2, u8::is_ascii_alphabetic)
                {
                    v.punct(&b[i..], false);
                    c[est::PUNCT] += 1;
                    c[est::PUNCT_RUNS] += 1;
                    i += 2 + take_word(b, i + 2, false, v, &mut by_len, &mut caps, &mut long_run);
                } else if b.get(i) == Some(&b'\n') && next_is(1, u8::is_ascii_alphabetic) {
                    c[est::NEWLINES] += 1;
                    v.newline();
                    i += 1 + take_word(b, i + 1, true, v, &mut by_len, &mut caps, &mut long_run);
                } else {
                    break;
                }
            }
            c[est::WORD_CAPITALISED] += caps;
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
                // A lone \r. Not before a \n (that pair is the line break counted next), it
                // breaks a line to the tokenizers too: counted as one (a text of them had
                // been estimated at 0 tokens, where o200k counts one for every two).
                if b.get(i + 1) != Some(&b'\n') {
                    c[est::NEWLINES] += 1;
                }
                i += 1;
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
    for (n, slot) in by_len.iter().zip(WORD_SLOT) {
        c[est::WORD_LEN + slot as usize] += n;
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

/// What the estimate and its bounds read of the counts in one base encoding: every family
/// on that base scales the same figures by its ratio (`Family::base`), so a plan over rows
/// of many families works them out once a base (once a family, the bundled registry's eight
/// had been a tenth of a short prompt's plan).
#[derive(Clone, Copy, Debug)]
pub struct BaseFigures {
    /// The estimator's dot product, before the ratio.
    dot: f32,
    /// No estimator input is set (an empty text): the estimate is 0.
    empty: bool,
    /// `CharCounts::lower_bound`.
    lower: f32,
    bytes: u32,
}

impl BaseFigures {
    pub fn new(c: &CharCounts, base: Family) -> BaseFigures {
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
        BaseFigures {
            dot,
            empty: c.counts.iter().take(N_EST - 1).all(|&v| v == 0.0),
            lower: c.lower_bound(),
            bytes: c.bytes,
        }
    }

    /// Estimated tokens in a family on this base whose count is `ratio` times the base's.
    pub fn estimate(&self, ratio: f32) -> f32 {
        if self.empty {
            return 0.0;
        }
        (self.dot * ratio).max(1.0)
    }

    /// (estimate, lower, upper) for the exact count in a family on this base (see
    /// `bounds_from_counts`).
    pub fn bounds(&self, ratio: f32) -> (f32, f32, f32) {
        let est = self.estimate(ratio);
        let hi = (self.bytes as f32 * ratio).ceil().max(est);
        // rounding is monotone: a count of at least `lower` scales to at least this
        let lo = (self.lower * ratio).round();
        (est, lo, hi)
    }
}

/// Estimated tokens from counts already gathered.
pub fn estimate_from_counts(c: &CharCounts, family: Family) -> f32 {
    let (base, ratio) = family.base();
    BaseFigures::new(c, base).estimate(ratio)
}

/// (estimate, lower, upper) for the exact count in `family` of text with counts `c`.
/// Upper: the byte count, which no byte-level BPE count can exceed; lower:
/// `CharCounts::lower_bound`; both scaled like the family's exact count.
pub fn bounds_from_counts(c: &CharCounts, family: Family) -> (f32, f32, f32) {
    let (base, ratio) = family.base();
    BaseFigures::new(c, base).bounds(ratio)
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
    fn lone_carriage_returns_are_estimated() {
        for text in ["\r".repeat(1000), " \r".repeat(500), "a\rb\r".repeat(200)] {
            let exact = count(&text, Family::O200k) as f32;
            let est = estimate(&text, Family::O200k);
            assert!(
                est >= 0.3 * exact && est <= 3.0 * exact,
                "est {est} exact {exact}"
            );
        }
        // a \r\n pair is one line break, as before
        let crlf = char_counts("a\r\nb");
        assert_eq!(crlf.counts[est::NEWLINES], 1.0);
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
    fn long_runs_are_within_bounds() {
        let text = "x".repeat(1 << 20);
        let c = char_counts(&text);
        let exact = count(&text, Family::O200k) as f32;
        let (_, lo, hi) = bounds_from_counts(&c, Family::O200k);
        assert!(lo <= exact && exact <= hi, "{lo} {exact} {hi}");
        assert!(estimate(&text, Family::O200k) > 100_000.0);
    }

    /// A small deterministic generator: `rand(n)` is in 0..n.
    fn lcg(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        }
    }

    /// Texts of every kind the bounds and the cuts reason about.
    fn odd_texts() -> Vec<String> {
        let mut rand = lcg(7);
        let alphabets: [&[char]; 9] = [
            &['x'],
            &['a', 'b', 'c', 'q', 'z', 'E', 'T'],
            &['a', 'b', '1', '2', '+', '/', '='],
            &[
                '!', '=', '-', '*', '#', '.', ',', ';', ':', '/', '\'', '"', '(',
            ],
            &[' ', ' ', ' ', '\t', '\n', '\r', 'a'],
            &['的', '一', '是', '，', '。', '\n', 'の', '한'],
            &['a', 'e', '\u{301}', '\u{308}', 'é', 'ß', 't', '\'', 's'],
            &['1', '2', '3', '²', '٣', '½', ' ', 'a'],
            &[
                '😀', '🦀', 'x', ' ', '\u{a0}', '\u{3000}', '\u{1c}', '\n', '/',
            ],
        ];
        let mut texts: Vec<String> = [
            "understanding relationships development ".repeat(300),
            "internationalization responsibilities ".repeat(300),
            "1234567890".repeat(1000),
            "don't can't it's we've I'll you'd caféteria naïve 2² x³ ".repeat(100),
            "The quick brown fox jumps over the lazy dog. ".repeat(300),
            "{\"id\":12345,\"name\":\"abc\",\"tags\":[\"x\",\"y\"],\"v\":3.25}".repeat(300),
            "fn main() {\n    let x = \"héllo  wörld\";  // 日本語\n}\r\n".repeat(200),
        ]
        .into();
        for a in alphabets {
            for len in [7, 300, 9000] {
                texts.push((0..len).map(|_| a[rand(a.len())]).collect());
            }
        }
        texts
    }

    #[test]
    fn lower_bound_is_below_every_exact_count() {
        for text in odd_texts() {
            let c = char_counts(&text);
            for f in Family::ALL {
                let (_, lo, _) = bounds_from_counts(&c, f);
                let head: String = text.chars().take(20).collect();
                assert!(lo <= count(&text, f) as f32, "{f:?} {lo} {head:?}");
            }
        }
        // tight where the estimate was 2.3x over: one token per long word
        let text = "understanding relationships development ".repeat(300);
        let lo = char_counts(&text).lower_bound();
        assert!(lo >= 0.95 * count(&text, Family::O200k) as f32, "{lo}");
    }

    #[test]
    fn max_token_bytes_is_the_longest_token() {
        for gz in [
            &include_bytes!("data/o200k_base.tiktoken.gz")[..],
            &include_bytes!("data/cl100k_base.tiktoken.gz")[..],
        ] {
            let mut ranks = String::new();
            flate2::read::GzDecoder::new(gz)
                .read_to_string(&mut ranks)
                .unwrap();
            let longest = ranks
                .lines()
                .filter_map(|l| l.split(' ').next())
                .map(|b64| b64.len() / 4 * 3 - b64.matches('=').count())
                .max();
            assert_eq!(longest, Some(MAX_TOKEN_BYTES));
        }
    }

    /// The pieces `count_on` would count, and whether each ends at a forced cut.
    fn pieces(text: &str, force: bool) -> Vec<(&str, bool)> {
        let mut rest = text;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (len, forced) = piece_len(rest, force);
            out.push((&rest[..len], forced));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn pieces_add_up_to_the_whole() {
        let line = "fn main() {\n    let x = \"héllo  wörld\";  // 日本語\n}\nThe end. 123\r\n";
        let texts = [
            line.repeat(3000), // about 170 KB: several pieces
            // one line each: cut by the cases after the line-break one
            "The quick brown fox, 42 lazy dogs! ".repeat(3000),
            "{\"id\":12345,\"name\":\"abc\",\"v\":[3.25,7]}".repeat(3000),
            "QUJDRGVmZ2hpams0NTY3+/ab12".repeat(4000),
            "日本語のテキスト，中文。\n".repeat(3000),
        ];
        for text in texts {
            for force in [false, true] {
                let ps = pieces(&text, force);
                assert!(ps.len() > 2 && ps.iter().all(|p| !p.1), "{force}");
                assert_eq!(ps.iter().map(|p| p.0).collect::<String>(), text);
                for f in [Family::O200k, Family::Cl100k] {
                    let whole = count(&text, f);
                    let summed: usize = ps.iter().map(|p| count(p.0, f)).sum();
                    assert_eq!(summed, whole, "{force} {:?}", &text[..30]);
                }
            }
            for f in [Family::O200k, Family::Cl100k] {
                let whole = count(&text, f);
                assert_eq!(count_till_limit(&text, f, whole), Some(whole));
                assert_eq!(count_till_limit(&text, f, whole - 1), None);
            }
        }
    }

    #[test]
    fn long_numbers_are_cut_exactly_between_their_pre_tokens() {
        // non-ASCII digits too: regrouped by a cut elsewhere, "०७२" (3 tokens in o200k) had
        // become "२०७" (1), and 6,000 digits counted 2,911 tokens
        for text in [
            "1234567890".repeat(6000),
            format!("x{}", "9".repeat(70_001)),
            format!("²{}", "9".repeat(20_000)),
            format!("xy{}", "०७२".repeat(2000)),
            format!("xy{}", "００１".repeat(2000)),
            format!("{}x", "٣".repeat(5000)),
        ] {
            let ps = pieces(&text, true);
            assert!(ps.len() > 2);
            assert!(ps.iter().all(|p| !p.1), "{:?}", &text[..8]);
            for f in [Family::O200k, Family::Cl100k] {
                let summed: usize = ps.iter().map(|p| count(p.0, f)).sum();
                assert_eq!(summed, count(&text, f), "{f:?} {:?}", &text[..8]);
            }
        }
    }

    #[test]
    fn forced_cuts_stay_within_their_slack() {
        // every kind of text cut by force, and single cuts at many places
        let mut worst = 0usize;
        for text in odd_texts() {
            for f in [Family::O200k, Family::Cl100k] {
                let whole = count(&text, f);
                let mut tally = Tally::default();
                count_on(&text, &mut 0, f, true, &mut tally, usize::MAX / 2);
                let off = tally.tokens.abs_diff(whole);
                assert!(off <= tally.slack, "{f:?} {tally:?} {whole}");
                let step = (text.len() / 23).max(1);
                for i in (1..text.len()).step_by(step) {
                    if text.is_char_boundary(i) {
                        let (a, b) = text.split_at(i);
                        worst = worst.max((count(a, f) + count(b, f)).abs_diff(whole));
                    }
                }
            }
        }
        assert!(
            worst <= FORCED_CUT_SLACK / 2,
            "a cut moved a count by {worst}"
        );
        // a 1 MB run is cut every STRETCH bytes, and the count ends early at a small limit
        let text = "x".repeat(1 << 20);
        let (mut tally, mut at) = (Tally::default(), 0);
        count_on(&text, &mut at, Family::O200k, true, &mut tally, 1000);
        assert!(tally.exceeds(1000) && at < 3 * STRETCH, "{at}");
        count_on(
            &text,
            &mut at,
            Family::O200k,
            true,
            &mut tally,
            usize::MAX / 2,
        );
        assert_eq!(at, text.len());
        let whole = count(&text, Family::O200k);
        assert!(tally.slack > 0 && tally.tokens.abs_diff(whole) <= tally.slack);
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
                    let (mut by_len, mut long) = ([0u32; 26], 0);
                    let (n, key, upper, caps_inside) = letter_run(b, 0, &mut by_len, &mut long);
                    assert_eq!(n, len, "{text:?}");
                    let mut want_by_len = [0u32; 26];
                    want_by_len[len.min(25)] = 1;
                    assert_eq!(by_len, want_by_len, "{text:?}");
                    assert_eq!(long as usize, len.saturating_sub(24), "{text:?}");
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
    fn words_match_a_byte_loop() {
        // The scan's words (a run of them with single spaces between is taken in one loop)
        // against a plain byte loop: each ASCII letter run's place, length, line start, key
        // and upper-case letters, and the estimator's counts of them.
        type Record = (usize, usize, bool, [u128; 2], usize);
        struct Words<'t>(&'t str, Vec<Record>);
        impl Visitor for Words<'_> {
            fn word(&mut self, w: &Word<'_>) {
                let at = self.0.len() - w.rest.len();
                self.1.push((at, w.len, w.line_start, w.key, w.upper));
            }
        }
        fn reference(text: &str) -> (Vec<Record>, [f32; 15], f32, u32) {
            let b = text.as_bytes();
            let (mut words, mut by_len, mut caps, mut long) = (vec![], [0f32; 15], 0f32, 0);
            let (mut i, mut line_start) = (0, true);
            while i < b.len() {
                let x = b[i];
                if x.is_ascii_alphabetic() {
                    let len = b[i..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphabetic())
                        .count();
                    let word = &b[i..i + len];
                    let mut key = [0u8; 32];
                    for (k, c) in key.iter_mut().zip(word) {
                        *k = c.to_ascii_lowercase();
                    }
                    let half = |r: &[u8]| u128::from_le_bytes(r.try_into().unwrap());
                    let upper = word.iter().take(32).filter(|c| c.is_ascii_uppercase());
                    let key = [half(&key[..16]), half(&key[16..])];
                    words.push((i, len, line_start, key, upper.count()));
                    by_len[WORD_SLOT[len.min(25)] as usize] += 1.0;
                    caps += f32::from(u8::from(word[1..].iter().any(u8::is_ascii_uppercase)));
                    long += len.saturating_sub(24) as u32;
                    line_start = false;
                    i += len;
                    continue;
                }
                if x == b'\n' {
                    line_start = true;
                } else if x.is_ascii_digit() || !x.is_ascii() {
                    line_start = false;
                } else if !matches!(x, b' ' | b'\t' | b'\r') {
                    line_start &= matches!(x, b'(' | b'-' | b'*');
                }
                i += 1;
            }
            (words, by_len, caps, long)
        }
        let mut rand = lcg(11);
        let seps = [
            " ", " ", " ", "  ", "\n", "-", " (", "\n- ", "é", "1", ". ", "\t", "",
        ];
        let mut texts = odd_texts();
        for _ in 0..300 {
            let mut t = String::new();
            for _ in 0..rand(40) {
                for _ in 0..1 + rand(40) {
                    let c = (b'a' + rand(26) as u8) as char;
                    t.push(if rand(5) == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    });
                }
                t.push_str(seps[rand(seps.len())]);
            }
            texts.push(t);
        }
        for text in texts {
            let mut seen = Words(&text, vec![]);
            let c = scan(&text, &mut seen);
            let (words, by_len, caps, long) = reference(&text);
            let head: String = text.chars().take(40).collect();
            assert_eq!(seen.1, words, "{head:?}");
            assert_eq!(
                c.counts[est::WORD_LEN..est::WORD_LEN + 15],
                by_len,
                "{head:?}"
            );
            assert_eq!(c.counts[est::WORD_CAPITALISED], caps, "{head:?}");
            assert_eq!(c.long_run_chars, long, "{head:?}");
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
