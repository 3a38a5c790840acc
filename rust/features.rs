//! Prompt → fixed-length f32 feature vector, flags and task class, in one pass per message.
//!
//! Layout (stable: trained predictors depend on it; bump `FEATURE_VERSION` on any change):
//! `[0, DENSE)` named dense features (see `DENSE_NAMES`), then `hash_buckets` signed,
//! L2-normalised hashed word unigrams and bigrams (xxh3 with a fixed seed, so the same
//! prompt maps to the same buckets on every platform and release).

use crate::tokens::{self, BaseFigures, CharCounts, Family};
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub const FEATURE_VERSION: u32 = 3;
pub const DENSE: usize = 32;
pub const DEFAULT_BUCKETS: usize = 1024;
pub const DEFAULT_SEED: u64 = 0x7469_6572_7769_7365; // fixed: trained predictors depend on it

pub const DENSE_NAMES: [&str; DENSE] = [
    "log_chars",
    "log_tokens",
    "log_turns",
    "log_system_chars",
    "code",
    "json",
    "math",
    "list",
    "question",
    "multiple_choice",
    "reasoning",
    "translation",
    "summarize",
    "extraction",
    "creative",
    "frac_latin",
    "frac_cjk",
    "frac_cyrillic",
    "frac_other_script",
    "frac_digits",
    "frac_punct",
    "newline_density",
    "avg_word_len",
    "frac_upper",
    "log_lines",
    "log_last_user_chars",
    "url",
    "code_fence",
    "log_numbers",
    "math_op_density",
    "frac_long_words",
    "bias",
];

/// Flag bits (also the dense features 4..=14, in the same order).
pub mod flag {
    pub const CODE: u32 = 1 << 0;
    pub const JSON: u32 = 1 << 1;
    pub const MATH: u32 = 1 << 2;
    pub const LIST: u32 = 1 << 3;
    pub const QUESTION: u32 = 1 << 4;
    pub const MULTIPLE_CHOICE: u32 = 1 << 5;
    pub const REASONING: u32 = 1 << 6;
    pub const TRANSLATION: u32 = 1 << 7;
    pub const SUMMARIZE: u32 = 1 << 8;
    pub const EXTRACTION: u32 = 1 << 9;
    pub const CREATIVE: u32 = 1 << 10;
    pub const NAMES: [&str; 11] = [
        "code",
        "json",
        "math",
        "list",
        "question",
        "multiple_choice",
        "reasoning",
        "translation",
        "summarize",
        "extraction",
        "creative",
    ];
}

/// One coarse task class per prompt, for rules (`when task = "code"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Code,
    Math,
    Extraction,
    Translation,
    Summarize,
    Creative,
    Reasoning,
    General,
}

impl Task {
    pub const NAMES: [&'static str; 8] = [
        "code",
        "math",
        "extraction",
        "translation",
        "summarize",
        "creative",
        "reasoning",
        "general",
    ];
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    pub fn parse(s: &str) -> Option<Task> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(Self::from_index)
    }
    fn from_index(i: usize) -> Task {
        [
            Task::Code,
            Task::Math,
            Task::Extraction,
            Task::Translation,
            Task::Summarize,
            Task::Creative,
            Task::Reasoning,
            Task::General,
        ][i]
    }
    fn from_flags(f: u32) -> Task {
        // Explicit instructions (extract, translate, summarise) outrank the math heuristics,
        // which also fire on prices and dates inside the text being processed.
        if f & flag::CODE != 0 {
            Task::Code
        } else if f & (flag::JSON | flag::EXTRACTION) != 0 {
            Task::Extraction
        } else if f & flag::TRANSLATION != 0 {
            Task::Translation
        } else if f & flag::SUMMARIZE != 0 {
            Task::Summarize
        } else if f & flag::MATH != 0 {
            Task::Math
        } else if f & flag::CREATIVE != 0 {
            Task::Creative
        } else if f & flag::REASONING != 0 {
            Task::Reasoning
        } else {
            Task::General
        }
    }
}

#[derive(Clone, Debug)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Copy, Debug)]
pub struct FeaturizerConfig {
    pub hash_buckets: usize,
    pub seed: u64,
}

impl Default for FeaturizerConfig {
    fn default() -> Self {
        Self {
            hash_buckets: DEFAULT_BUCKETS,
            seed: DEFAULT_SEED,
        }
    }
}

impl FeaturizerConfig {
    pub fn dim(&self) -> usize {
        DENSE + self.hash_buckets
    }
}

/// What the router needs from a prompt besides the vector.
#[derive(Clone, Debug)]
pub struct PromptInfo {
    pub flags: u32,
    pub task: Task,
    pub chars: usize,
    pub turns: usize,
    pub system_chars: usize,
    /// Character-class counts over all message contents (for per-family estimates).
    pub counts: CharCounts,
    pub messages: usize,
}

impl PromptInfo {
    /// Estimated prompt tokens for a family, including chat-format overhead.
    pub fn est_tokens(&self, family: Family) -> f32 {
        let (base, ratio) = family.base();
        self.estimate(&self.figures(base), ratio)
    }

    /// The counts' figures in `base`, which a family's estimate and bounds scale.
    pub fn figures(&self, base: Family) -> BaseFigures {
        BaseFigures::new(&self.counts, base)
    }

    /// `est_tokens` of a family whose count is `ratio` times that of the base `f` is in.
    pub fn estimate(&self, f: &BaseFigures, ratio: f32) -> f32 {
        f.estimate(ratio) + self.overhead()
    }

    /// (estimate, lower, upper) prompt tokens in a family whose count is `ratio` times that
    /// of the base `f` is in, chat overhead included (see `tokens::bounds_from_counts`).
    pub fn bounds(&self, f: &BaseFigures, ratio: f32) -> (f32, f32, f32) {
        let (est, lo, hi) = f.bounds(ratio);
        let o = self.overhead();
        (est + o, lo + o, hi + o)
    }

    fn overhead(&self) -> f32 {
        (self.messages * tokens::PER_MESSAGE_OVERHEAD + tokens::PER_REQUEST_OVERHEAD) as f32
    }
}

/// Per-conversation state the featurizer gathers through `tokens::Visitor` callbacks,
/// so the estimator's counts and the features come from one pass over each message.
///
/// `HASH` (hashed n-gram buckets wanted) and `EMB` (the embedding summed in the scan) are
/// fixed per scan as type parameters, so the scan is compiled once per combination and the
/// usual route's (neither: the bundled predictor reads only the dense features) tests
/// neither per word nor keeps their state live in the word loop (~6% of a 4 KB prompt's
/// `route()` instructions, `benches/instructions.py route`).
struct Scan<'a, const HASH: bool, const EMB: bool> {
    vec: &'a mut [f32],
    buckets: usize,
    seed: u64,
    letters: usize,
    latin: usize,
    cjk: usize,
    cyrillic: usize,
    other_script: usize,
    digits: usize,
    punct: usize,
    upper: usize,
    newlines: usize,
    word_bytes: usize,
    numbers: usize,
    math_ops: usize,
    code_chars: usize,
    /// The markers seen, with the keyword table's `URL` and `OPENER` bits as they came
    /// (one OR a word; sorted out at the end).
    flags: u32,
    fence: bool,
    mc_options: u32, // bit per option letter seen as "A)", "(B)", "C." at line start
    bullets: usize,
    prev_word: u64,
    first_word_of_msg: bool,
    /// The static embedding's sum over the words, when the caller wants it (one scan).
    emb: Option<(&'a crate::embed::WordTable, &'a mut crate::embed::Sum)>,
}

/// Keyword → flags. Lower-case ASCII words; one table so adding a marker is one line.
/// `OPENER` marks words that make a message a question when they open it.
const OPENER: u32 = 1 << 31;
/// Words that start a URL.
const URL: u32 = 1 << 30;
const KEYWORDS: &[(&str, u32)] = &[
    ("http", URL),
    ("https", URL),
    ("www", URL),
    ("def", flag::CODE),
    ("function", flag::CODE),
    ("class", flag::CODE),
    ("import", flag::CODE),
    ("python", flag::CODE),
    ("javascript", flag::CODE),
    ("typescript", flag::CODE),
    ("code", flag::CODE),
    ("program", flag::CODE),
    ("implement", flag::CODE),
    ("compile", flag::CODE),
    ("bug", flag::CODE),
    ("sql", flag::CODE),
    ("regex", flag::CODE),
    ("java", flag::CODE),
    ("rust", flag::CODE),
    ("golang", flag::CODE),
    ("cpp", flag::CODE),
    ("script", flag::CODE),
    ("debug", flag::CODE),
    ("refactor", flag::CODE),
    ("api", flag::CODE),
    ("html", flag::CODE),
    ("css", flag::CODE),
    ("bash", flag::CODE),
    ("lambda", flag::CODE),
    ("const", flag::CODE),
    ("println", flag::CODE),
    ("printf", flag::CODE),
    ("elif", flag::CODE),
    ("struct", flag::CODE),
    ("fn", flag::CODE),
    ("json", flag::JSON),
    ("yaml", flag::JSON),
    ("schema", flag::JSON),
    ("xml", flag::JSON),
    ("csv", flag::JSON),
    ("calculate", flag::MATH),
    ("compute", flag::MATH),
    ("solve", flag::MATH),
    ("equation", flag::MATH),
    ("integral", flag::MATH),
    ("derivative", flag::MATH),
    ("probability", flag::MATH),
    ("math", flag::MATH),
    ("arithmetic", flag::MATH),
    ("algebra", flag::MATH),
    ("geometry", flag::MATH),
    ("fraction", flag::MATH),
    ("multiply", flag::MATH),
    ("divide", flag::MATH),
    ("remainder", flag::MATH),
    ("prime", flag::MATH),
    ("polynomial", flag::MATH),
    ("list", flag::LIST),
    ("enumerate", flag::LIST),
    ("bullet", flag::LIST),
    ("bullets", flag::LIST),
    ("explain", flag::REASONING),
    ("why", flag::REASONING | OPENER),
    ("prove", flag::REASONING),
    ("reason", flag::REASONING),
    ("reasoning", flag::REASONING),
    ("analyze", flag::REASONING),
    ("analyse", flag::REASONING),
    ("compare", flag::REASONING),
    ("justify", flag::REASONING),
    ("evaluate", flag::REASONING),
    ("infer", flag::REASONING),
    ("deduce", flag::REASONING),
    ("logic", flag::REASONING),
    ("step", flag::REASONING),
    ("translate", flag::TRANSLATION),
    ("translation", flag::TRANSLATION),
    ("translated", flag::TRANSLATION),
    ("summarize", flag::SUMMARIZE),
    ("summarise", flag::SUMMARIZE),
    ("summary", flag::SUMMARIZE),
    ("tldr", flag::SUMMARIZE),
    ("condense", flag::SUMMARIZE),
    ("extract", flag::EXTRACTION),
    ("classify", flag::EXTRACTION),
    ("label", flag::EXTRACTION),
    ("entities", flag::EXTRACTION),
    ("sentiment", flag::EXTRACTION),
    ("categorize", flag::EXTRACTION),
    ("categorise", flag::EXTRACTION),
    ("parse", flag::EXTRACTION),
    ("tag", flag::EXTRACTION),
    ("story", flag::CREATIVE),
    ("poem", flag::CREATIVE),
    ("poetry", flag::CREATIVE),
    ("creative", flag::CREATIVE),
    ("song", flag::CREATIVE),
    ("lyrics", flag::CREATIVE),
    ("essay", flag::CREATIVE),
    ("fiction", flag::CREATIVE),
    ("haiku", flag::CREATIVE),
    ("slogan", flag::CREATIVE),
    ("what", OPENER),
    ("how", OPENER),
    ("who", OPENER),
    ("when", OPENER),
    ("where", OPENER),
    ("which", OPENER),
    ("is", OPENER),
    ("are", OPENER),
    ("can", OPENER),
    ("does", OPENER),
    ("do", OPENER),
];

/// A collision-free hash table over words packed into a u128 (keywords are ≤ 16 bytes): one
/// multiply and one compare per word, without a branch on the word (a probe loop's "empty
/// slot?" test was the scan's most mispredicted branch: "is", "can" and "do" are common
/// words). Built at compile time into fixed-size arrays: a lookup checks no lazy
/// initialisation and no bounds (the slot is masked to the size).
struct KeywordTable {
    keys: [u128; KW_SIZE],
    flags: [u32; KW_SIZE],
}

const KW_BITS: u32 = 10;
const KW_SIZE: usize = 1 << KW_BITS;

/// The multiplier gives every keyword a slot of its own (found by trying random odd
/// numbers; a keyword added that collides fails the build, and another is to be found).
const fn kw_slot(key: u128) -> usize {
    let h =
        ((key as u64) ^ ((key >> 64) as u64).rotate_left(29)).wrapping_mul(0x67F8_6286_688E_ED8F);
    (h >> (64 - KW_BITS)) as usize
}

/// A word of 1 to 16 bytes as the scan packs it (little-endian, zero-padded); None otherwise.
const fn pack(w: &[u8]) -> Option<u128> {
    if w.is_empty() || w.len() > 16 {
        return None;
    }
    let (mut key, mut i) = (0u128, 0);
    while i < w.len() {
        key |= (w[i] as u128) << (8 * i);
        i += 1;
    }
    Some(key)
}

static KEYWORD_TABLE: KeywordTable = {
    let mut t = KeywordTable {
        keys: [0; KW_SIZE],
        flags: [0; KW_SIZE],
    };
    let mut j = 0;
    while j < KEYWORDS.len() {
        let (w, f) = KEYWORDS[j];
        let Some(key) = pack(w.as_bytes()) else {
            panic!("a keyword is 1 to 16 bytes");
        };
        assert!(f != 0, "a keyword has a flag");
        let i = kw_slot(key);
        assert!(
            t.keys[i] == 0 || t.keys[i] == key,
            "two keywords share a slot: choose another multiplier in kw_slot"
        );
        t.keys[i] = key;
        t.flags[i] |= f;
        j += 1;
    }
    t
};

/// Flags (and `OPENER`, `URL`) for a lower-case word; 0 for ordinary words.
#[cfg(test)]
fn keyword_flags(w: &[u8]) -> u32 {
    pack(w).map_or(0, keyword_flags_packed)
}

#[inline]
fn keyword_flags_packed(key: u128) -> u32 {
    let i = kw_slot(key);
    let hit = KEYWORD_TABLE.keys[i] == key;
    // a select, not a branch (a keyword is no slot's key but its own)
    KEYWORD_TABLE.flags[i] & (hit as u32).wrapping_neg()
}

impl<const HASH: bool, const EMB: bool> Scan<'_, HASH, EMB> {
    #[inline]
    fn bucket_add(&mut self, h: u64) {
        if self.buckets > 0 {
            // Multiply-shift range reduction (Lemire): a u64 `%` is a division, and it was
            // the single largest cost of featurising prose. The sign comes from the low bit,
            // which the reduction (high bits) does not use.
            let idx = ((h as u128 * self.buckets as u128) >> 64) as usize;
            self.vec[DENSE + idx] += if h & 1 == 0 { 1.0 } else { -1.0 };
        }
    }

    /// Add a word (`Word::lower`) and its bigram with the word before to the hashed buckets.
    /// Out of line, and given the word's bytes rather than the `Word`: inlined into the
    /// scan, the hash's seeded setup was hoisted to where the word loop is entered and its
    /// registers spilled the loop's, and a `Word` passed by reference was built in memory
    /// for every word, costs every route paid though one without a predictor's buckets
    /// hashes no word.
    #[inline(never)]
    fn hash_word(&mut self, (buf, n): ([u8; 32], usize)) {
        let h = xxh3_64_with_seed(&buf[..n], self.seed);
        self.bucket_add(h);
        if self.prev_word != 0 {
            self.bucket_add(
                (self.prev_word.rotate_left(23) ^ h).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
        }
        self.prev_word = h;
    }
}

impl<const HASH: bool, const EMB: bool> tokens::Visitor for Scan<'_, HASH, EMB> {
    // Inlined into the scan's loop: called for every word (a 4 KB prompt has ~650), where
    // the call's entry and exit alone had been ~17 instructions a word.
    #[inline(always)]
    fn word(&mut self, w: &tokens::Word<'_>) {
        let (len, line_start) = (w.len, w.line_start);
        // Few counters a word: `letters` and `latin` get the words' bytes at the end
        // (`word_bytes`), and the word count and the long words' come from the
        // estimator's counts of words by length.
        self.word_bytes += len;
        self.upper += w.upper;
        // The scan packed the lower-cased word: the keyword table's key (no keyword is
        // longer than 16 bytes) and the embedding table's.
        let kw = if len <= 16 {
            keyword_flags_packed(w.key[0])
        } else {
            0
        };
        if EMB {
            if let Some((t, acc)) = self.emb.as_mut() {
                if len <= 32 {
                    t.add(w.key[0], w.key[1], acc); // a longer word is in no table
                }
            }
        }
        self.flags |= kw;
        if self.first_word_of_msg {
            // cleared here, not stored on every word
            self.first_word_of_msg = false;
            if kw & OPENER != 0 {
                self.flags |= flag::QUESTION;
            }
        }
        // Multiple-choice options: a single capital A-E at a line start followed by ) . or :
        // (the byte after the word is read only here: most words never need it)
        if line_start
            && len == 1
            && (b'A'..=b'E').contains(&w.rest[0])
            && matches!(w.rest.get(1), Some(b')' | b'.' | b':'))
        {
            self.mc_options |= 1 << (w.rest[0] - b'A');
        }
        if HASH {
            self.hash_word(w.lower());
        }
    }

    fn digits(&mut self, len: usize) {
        self.digits += len;
        self.numbers += 1;
    }

    // Inlined into the scan's loop too: prose has one punctuation byte in six words, and
    // the call's entry and exit were most of its cost.
    #[inline(always)]
    fn punct(&mut self, rest: &[u8], line_start: bool) {
        self.punct += 1;
        match rest[0] {
            b'?' => self.flags |= flag::QUESTION,
            b'-' | b'*' if line_start => self.bullets += 1,
            b'+' | b'*' | b'/' | b'=' | b'^' => self.math_ops += 1,
            b'{' | b'}' | b';' | b'<' | b'>' => self.code_chars += 1,
            b'`' if rest.starts_with(b"```") => self.fence = true,
            b'(' if line_start => {
                if let [_, l @ b'A'..=b'E', b')', ..] = rest {
                    self.mc_options |= 1 << (l - b'A');
                }
            }
            _ => {}
        }
    }

    fn newline(&mut self) {
        self.newlines += 1;
    }

    fn non_ascii(&mut self, ch: char, bytes: &[u8]) {
        if tokens::is_cjk(ch) {
            self.cjk += 1;
            self.letters += 1;
            // CJK has no spaces: each character is a "word" for hashing.
            if HASH {
                let h = xxh3_64_with_seed(bytes, self.seed);
                self.bucket_add(h);
                self.prev_word = h;
            }
        } else if ch.is_alphabetic() {
            self.letters += 1;
            if ('\u{0400}'..='\u{04FF}').contains(&ch) {
                self.cyrillic += 1;
            } else if (ch as u32) < 0x250 {
                self.latin += 1; // accented Latin
            } else {
                self.other_script += 1;
            }
            self.upper += ch.is_uppercase() as usize;
        }
    }
}

/// Featurize one conversation into `out` (length `cfg.dim()`, overwritten).
pub fn featurize_into(messages: &[Message], cfg: &FeaturizerConfig, out: &mut [f32]) -> PromptInfo {
    featurize_and_embed(messages, cfg, out, None)
}

/// `featurize_into`, also adding every word's row of the embedding table to `emb` in the
/// same scan (what `embed::WordTable::add_text` would add, without reading the text twice).
pub fn featurize_and_embed<'a>(
    messages: &[Message],
    cfg: &FeaturizerConfig,
    out: &'a mut [f32],
    emb: Option<(&'a crate::embed::WordTable, &'a mut crate::embed::Sum)>,
) -> PromptInfo {
    match (cfg.hash_buckets > 0, emb.is_some()) {
        (false, false) => featurize_with::<false, false>(messages, cfg, out, emb),
        (false, true) => featurize_with::<false, true>(messages, cfg, out, emb),
        (true, false) => featurize_with::<true, false>(messages, cfg, out, emb),
        (true, true) => featurize_with::<true, true>(messages, cfg, out, emb),
    }
}

/// `featurize_and_embed` with the scan compiled for whether it hashes words (`HASH`:
/// `cfg.hash_buckets > 0`) and sums the embedding (`EMB`: `emb` given); see `Scan`.
fn featurize_with<'a, const HASH: bool, const EMB: bool>(
    messages: &[Message],
    cfg: &FeaturizerConfig,
    out: &'a mut [f32],
    emb: Option<(&'a crate::embed::WordTable, &'a mut crate::embed::Sum)>,
) -> PromptInfo {
    debug_assert_eq!(out.len(), cfg.dim());
    debug_assert_eq!((HASH, EMB), (cfg.hash_buckets > 0, emb.is_some()));
    out.iter_mut().for_each(|v| *v = 0.0);
    let mut s = Scan::<HASH, EMB> {
        vec: out,
        buckets: cfg.hash_buckets,
        seed: cfg.seed,
        letters: 0,
        latin: 0,
        cjk: 0,
        cyrillic: 0,
        other_script: 0,
        digits: 0,
        punct: 0,
        upper: 0,
        newlines: 0,
        word_bytes: 0,
        numbers: 0,
        math_ops: 0,
        code_chars: 0,
        flags: 0,
        fence: false,
        mc_options: 0,
        bullets: 0,
        prev_word: 0,
        first_word_of_msg: true,
        emb,
    };
    let mut counts = CharCounts::default();
    let mut chars = 0usize;
    let mut system_chars = 0usize;
    let mut turns = 0usize;
    let mut last_user_chars = 0usize;
    for m in messages {
        s.prev_word = 0;
        s.first_word_of_msg = true;
        counts.add(&tokens::scan(&m.content, &mut s));
        let len = m.content.len();
        chars += len;
        match m.role.as_str() {
            "system" | "developer" => system_chars += len,
            "user" => {
                turns += 1;
                last_user_chars = len;
            }
            _ => turns += 1,
        }
    }
    counts.counts[tokens::est::BIAS] = 1.0;
    let url = s.flags & URL != 0;
    let mut flags = s.flags & !(OPENER | URL);
    if s.fence || (s.code_chars >= 4 && s.code_chars * 40 >= chars.max(1)) {
        flags |= flag::CODE;
    }
    if s.mc_options.count_ones() >= 2 {
        flags |= flag::MULTIPLE_CHOICE;
    }
    if s.bullets >= 2 {
        flags |= flag::LIST;
    }
    if s.math_ops >= 2 && s.numbers >= 2 {
        flags |= flag::MATH;
    }
    let info = PromptInfo {
        flags,
        task: Task::from_flags(flags),
        chars,
        turns,
        system_chars,
        counts,
        messages: messages.len(),
    };
    let fc = chars.max(1) as f32;
    // ASCII letters are all in words; the non-ASCII ones were counted as they came
    let (all_letters, latin) = (s.letters + s.word_bytes, s.latin + s.word_bytes);
    let letters = all_letters.max(1) as f32;
    let ln = |v: usize| (v as f32).ln_1p() / 10.0;
    let out = &mut *s.vec;
    let dense = &mut out[..DENSE];
    dense[0] = ln(chars);
    dense[1] = (info.est_tokens(Family::O200k)).ln_1p() / 10.0;
    dense[2] = ln(turns);
    dense[3] = ln(system_chars);
    for (k, d) in dense[4..15].iter_mut().enumerate() {
        *d = ((flags >> k) & 1) as f32;
    }
    dense[15] = latin as f32 / letters;
    dense[16] = s.cjk as f32 / letters;
    dense[17] = s.cyrillic as f32 / letters;
    dense[18] = s.other_script as f32 / letters;
    dense[19] = s.digits as f32 / fc;
    dense[20] = s.punct as f32 / fc;
    dense[21] = (s.newlines as f32 / fc * 10.0).min(1.0);
    // every word is one of the estimator's letter runs, counted by length (the last slots:
    // 10 letters and more)
    let by_len = &info.counts.counts[tokens::est::WORD_LEN..tokens::est::WORD_LEN + 15];
    let words = by_len.iter().sum::<f32>();
    let long_words = by_len[tokens::LONG_WORD_SLOT..].iter().sum::<f32>();
    dense[22] = if words > 0.0 {
        s.word_bytes as f32 / words / 10.0
    } else {
        0.0
    };
    dense[23] = s.upper as f32 / letters;
    dense[24] = ln(s.newlines + 1);
    dense[25] = ln(last_user_chars);
    dense[26] = url as u8 as f32;
    dense[27] = s.fence as u8 as f32;
    dense[28] = ln(s.numbers);
    dense[29] = (s.math_ops as f32 / fc * 20.0).min(1.0);
    dense[30] = if words > 0.0 { long_words / words } else { 0.0 };
    dense[31] = 1.0;
    let hashed = &mut out[DENSE..];
    let norm = hashed.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        hashed.iter_mut().for_each(|v| *v /= norm);
    }
    info
}

pub fn featurize(messages: &[Message], cfg: &FeaturizerConfig) -> (Vec<f32>, PromptInfo) {
    let mut v = vec![0f32; cfg.dim()];
    let info = featurize_into(messages, cfg, &mut v);
    (v, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Vec<Message> {
        vec![Message {
            role: "user".into(),
            content: s.into(),
        }]
    }

    #[test]
    fn flags_and_task() {
        let cfg = FeaturizerConfig::default();
        let (_, i) = featurize(&user("Write a python function that returns the sum"), &cfg);
        assert_eq!(i.task, Task::Code);
        let (_, i) = featurize(&user("Solve 12 + 7 * 3 = ?"), &cfg);
        assert_eq!(i.task, Task::Math);
        let (_, i) = featurize(&user("Return the answer as JSON"), &cfg);
        assert_eq!(i.task, Task::Extraction);
        let (_, i) = featurize(&user("Q?\nA) one\nB) two\nC) three"), &cfg);
        assert!(i.flags & flag::MULTIPLE_CHOICE != 0);
        let (_, i) = featurize(&user("hello there"), &cfg);
        assert_eq!(i.task, Task::General);
    }

    #[test]
    fn deterministic_and_normalised() {
        let cfg = FeaturizerConfig::default();
        let (a, _) = featurize(&user("the same prompt twice"), &cfg);
        let (b, _) = featurize(&user("the same prompt twice"), &cfg);
        assert_eq!(a, b);
        let n: f32 = a[DENSE..].iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-4);
        assert_eq!(a.len(), DENSE + DEFAULT_BUCKETS);
    }

    #[test]
    fn empty_and_odd_input() {
        let cfg = FeaturizerConfig::default();
        let (v, i) = featurize(&[], &cfg);
        assert!(v.iter().all(|x| x.is_finite()));
        assert_eq!(i.chars, 0);
        let (v, _) = featurize(&user("日本語のテキスト🙂 Привет мир \u{0}"), &cfg);
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn keyword_table_finds_every_keyword() {
        for (w, f) in KEYWORDS {
            assert_eq!(
                keyword_flags(w.as_bytes()),
                *f | keyword_flags(w.as_bytes()),
                "{w}"
            );
            assert_ne!(keyword_flags(w.as_bytes()), 0, "{w}");
        }
        assert_eq!(keyword_flags(b"the"), 0);
        assert_eq!(keyword_flags(b"abcdefghijklmnopq"), 0);
    }

    #[test]
    fn names_match_dim() {
        assert_eq!(DENSE_NAMES.len(), DENSE);
        assert_eq!(Task::parse("code"), Some(Task::Code));
    }
}
