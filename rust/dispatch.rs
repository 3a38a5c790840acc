//! The compiled routing table: model rows, a quality predictor and rules, built once per
//! registry/policy change and shared read-only. `plan` featurises the prompt, estimates
//! tokens and cost per model, filters by the constraints and ranks what is left.

use crate::features::{self, FeaturizerConfig, Message, PromptInfo, Task};
use crate::tokens::{self, BaseFigures, Family, Tally};
use crate::CoreError;
use std::cell::Cell;
use std::cmp::Ordering;
use std::sync::Arc;

/// Capability bits (`needs=["json", "tools"]`).
pub mod cap {
    pub const NAMES: [&str; 7] = [
        "json",
        "tools",
        "vision",
        "streaming",
        "reasoning",
        "logprobs",
        "system_prompt",
    ];
    pub fn parse(name: &str) -> Option<u32> {
        NAMES.iter().position(|n| *n == name).map(|i| 1 << i)
    }
}

#[derive(Clone, Debug)]
pub struct ModelRow {
    pub id: String,
    /// USD per 1M tokens; NaN = unpriced (never treated as free).
    pub price_in: f64,
    pub price_out: f64,
    pub context_window: u32,
    pub max_output: u32,
    pub caps: u32,
    /// NaN = unknown (then a latency SLO cannot be checked and the model is dropped under one).
    pub p95_ms: f64,
    pub family: Family,
    pub disabled: bool,
    /// Prompt tokens above which `long_in`/`long_out` apply (infinity: no such tier).
    pub long_above: f64,
    pub long_in: f64,
    pub long_out: f64,
    /// USD billed per call on top of tokens (0 for most models).
    pub fee: f64,
    /// Tokens of thinking the wire adds to every call's max_tokens (Anthropic's budget),
    /// already taken off `context_window` and `max_output`.
    pub thinking: u32,
    /// The thinking is a budget Anthropic wants under max_tokens (extended thinking), not
    /// room the model may use (adaptive thinking): a limit that holds the thinking must
    /// exceed it.
    pub thinking_fixed: bool,
    /// USD per thinking token at the cheapest of its deployments' rates: what a budget
    /// lowered to `Constraints::thinking_cap` takes off `fee` per token (the fee stays at
    /// or over what any deployment bills, the dearest-fee one included).
    pub thinking_rate: f64,
}

impl ModelRow {
    /// This row sent a thinking budget of `cap` in place of its own (`thinking`, over it):
    /// its window and max output get back the budget's difference, its fee loses it.
    fn lowered(&self, cap: u32) -> ModelRow {
        let cut = self.thinking - cap;
        ModelRow {
            id: String::new(), // (a lowered row is read for its limits and prices only)
            context_window: self.context_window.saturating_add(cut),
            max_output: self.max_output.saturating_add(cut),
            fee: (self.fee - cut as f64 * self.thinking_rate).max(0.0),
            thinking: cap,
            ..*self
        }
    }

    pub fn priced(&self) -> bool {
        self.price_in.is_finite() && self.price_out.is_finite()
    }
    /// The most prompt tokens whose cost, with `out` completion tokens, stays within `cap`
    /// (the inverse of `cost`, long-context tier included).
    pub fn max_tokens_within(&self, cap: f64, out: f64) -> f64 {
        let cap = cap - self.fee;
        let base = (cap * 1e6 - out * self.price_out) / self.price_in;
        if base <= self.long_above {
            return base;
        }
        let long = (cap * 1e6 - out * self.long_out) / self.long_in;
        if long > self.long_above {
            long
        } else {
            self.long_above
        }
    }

    /// Estimated USD; a prompt above the long-context threshold is billed whole at those
    /// rates (as the providers do).
    pub fn cost(&self, tokens_in: f64, tokens_out: f64) -> f64 {
        let (pin, pout) = if tokens_in > self.long_above {
            (self.long_in, self.long_out)
        } else {
            (self.price_in, self.price_out)
        };
        (tokens_in * pin + tokens_out * pout) / 1e6 + self.fee
    }
}

/// Multidimensional IRT predictor:
/// P(good | m, x) = sigmoid(bias_m + ability_m · e(x) − d(x)), where `[e(x), d(x)] = W x + c`.
/// `weights` is feature-major: row j holds the k+1 outputs' weights for feature j, so a
/// sparse prompt touches only its non-zero rows.
#[derive(Clone, Debug)]
pub struct Predictor {
    pub dim: usize,
    pub k: usize,
    pub weights: Vec<f32>,
    pub intercept: Vec<f32>,
}

impl Predictor {
    pub fn new(
        dim: usize,
        k: usize,
        weights: Vec<f32>,
        intercept: Vec<f32>,
    ) -> Result<Self, CoreError> {
        if weights.len() != dim * (k + 1) || intercept.len() != k + 1 {
            return Err(CoreError::Config(format!(
                "predictor shape mismatch: weights has {} values, need dim*(k+1) = {}*{}; \
                 intercept has {}, need {}",
                weights.len(),
                dim,
                k + 1,
                intercept.len(),
                k + 1
            )));
        }
        if weights
            .iter()
            .chain(intercept.iter())
            .any(|v| !v.is_finite())
        {
            return Err(CoreError::Config(
                "predictor weights contain NaN or infinity".into(),
            ));
        }
        Ok(Self {
            dim,
            k,
            weights,
            intercept,
        })
    }

    /// `[e_0..e_{k-1}, difficulty]` for one feature vector.
    pub fn latent(&self, x: &[f32]) -> Vec<f32> {
        let w = self.k + 1;
        let mut z = self.intercept.clone();
        for (j, &xj) in x.iter().enumerate().take(self.dim) {
            if xj != 0.0 {
                let row = &self.weights[j * w..(j + 1) * w];
                for (zi, wi) in z.iter_mut().zip(row) {
                    *zi += xj * wi;
                }
            }
        }
        z
    }

    /// `params`: one model's `[bias, ability_0..ability_{k-1}]`.
    pub fn logit(&self, latent: &[f32], params: &[f32]) -> f32 {
        let (e, d) = latent.split_at(self.k);
        let (bias, ability) = (params[0], &params[1..]);
        bias + ability.iter().zip(e).map(|(a, b)| a * b).sum::<f32>() - d[0]
    }
}

/// `x.ceil() as u32` without a libm call per model (x86-64's baseline has no rounding
/// instruction): the truncation, one more when it fell short of `x`. The same for every
/// `x`: NaN and what is at most 0 give 0, and past `u32::MAX` both saturate.
fn ceil_u32(x: f64) -> u32 {
    let t = x as u32;
    t.saturating_add(u32::from((t as f64) < x))
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Per-model logistic regressions on the prompt's static embedding (`embed.rs`), whose logit
/// is averaged with the IRT one: `w` holds, per row, 64 weights on embed(x) / 127 and an
/// intercept (stride 65); rows without one (`has` false) use the IRT logit alone.
#[derive(Clone, Debug)]
pub struct EmbWeights {
    pub w: Vec<f32>,
    pub has: Vec<bool>,
}

impl EmbWeights {
    pub const STRIDE: usize = crate::embed::DIM + 1;

    fn logit(&self, row: usize, u: &[f32; crate::embed::DIM]) -> f32 {
        let w = &self.w[row * Self::STRIDE..(row + 1) * Self::STRIDE];
        // Eight running sums: one sum's chain of dependent float adds cannot be vectorised
        // (the order of a float sum is part of its value), eight independent ones can.
        let mut acc = [0f32; 8];
        for (ws, us) in w[..crate::embed::DIM]
            .chunks_exact(8)
            .zip(u.chunks_exact(8))
        {
            for i in 0..8 {
                acc[i] += ws[i] * us[i];
            }
        }
        acc.iter().sum::<f32>() + w[crate::embed::DIM]
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub task: Option<Task>,
    /// All of these flags must be set.
    pub flags_all: u32,
    pub min_tokens_in: f32,
    pub max_tokens_in: f32,
    /// Model row indices, in the rule's order of preference.
    pub models: Vec<usize>,
}

impl Rule {
    fn matches(&self, info: &PromptInfo, tokens_in: f32) -> bool {
        self.task.is_none_or(|t| t == info.task)
            && info.flags & self.flags_all == self.flags_all
            && tokens_in >= self.min_tokens_in
            && tokens_in <= self.max_tokens_in
    }
}

#[derive(Clone, Debug)]
pub struct Constraints {
    /// NaN = no limit.
    pub max_cost: f64,
    pub latency_slo_ms: f64,
    pub quality_floor: f32,
    pub required_caps: u32,
    /// Caller's max_tokens; None = the table's expectation for the task.
    pub max_output_tokens: Option<u32>,
    /// Some(λ): rank by P(good) − λ·USD instead of cheapest-above-floor.
    pub lambda: Option<f64>,
    /// Per row: true = skip (cooling down, or not allowed for this caller).
    pub exclude: Vec<bool>,
    /// Per row: measured p95 latency (ms) that replaces the registry's; NaN = none. Empty
    /// when nothing has been measured.
    pub live_p95_ms: Vec<f64>,
    /// Image parts in the messages: their tokens are added to the prompt's.
    pub images: u32,
    /// File and audio parts: carried to the model, but their tokens cannot be counted or
    /// bounded here, so no cost limit can be checked for them.
    pub uncounted: u32,
    /// What the request sends besides its messages (tool definitions, a response schema):
    /// counted as prompt tokens (estimates, windows, costs, budgets), not featurised.
    pub extra_text: String,
    /// Count the prompt for every candidate (once per base encoding), not only near a
    /// limit: a budget's reservation or a tokens-a-minute limit reads the count, and an
    /// estimate may be several times under it (punctuation, CJK, base64).
    pub count_prompt: bool,
    /// `max_output_tokens` bounds a row's thinking and its answer together (what Anthropic's
    /// max_tokens and OpenAI's max_completion_tokens mean): a row that thinks for B tokens
    /// answers within max_output_tokens − B, and one whose budget (`thinking_fixed`) fills
    /// it is left out; adaptive thinking's room is cut by it.
    pub output_includes_thinking: bool,
    /// The caller's most thinking tokens (`max_reasoning_tokens`): a row with a fixed budget
    /// over it (`thinking_fixed`) is sent this budget instead. The rows that may not be
    /// (under Anthropic's smallest budget, or not the model's smallest) come excluded
    /// (`registry.lowered_budget`).
    pub thinking_cap: Option<u32>,
}

/// Prompt tokens of one image: a lower bound, an estimate and an upper bound wide enough
/// for every provider's published accounting (`image_max` narrows the upper bound for a
/// family whose provider publishes a smaller one). OpenAI's tiled models: 85 at low detail
/// to ~1,100 for a large high-detail image; its patch-based mini and nano models: up to
/// 1,536 32-px patches times a per-model multiplier (2.46 for the nano: ~3,780), and a tiny
/// image a few patches. (The upper bound had been Anthropic's 1,600 for every model, under
/// a nano model's large image.)
pub const IMAGE_TOKENS: (f64, f64, f64) = (1.0, 765.0, 3800.0);

/// The most prompt tokens one image is billed by a model of `family`: Anthropic resizes
/// past 1.15 megapixels, ~1,600 tokens; the others, the widest published (IMAGE_TOKENS).
pub fn image_max(family: Family) -> f64 {
    match family {
        Family::Claude => 1600.0,
        _ => IMAGE_TOKENS.2,
    }
}

impl Default for Constraints {
    fn default() -> Self {
        Self {
            max_cost: f64::NAN,
            latency_slo_ms: f64::NAN,
            quality_floor: 0.0,
            required_caps: 0,
            max_output_tokens: None,
            lambda: None,
            exclude: Vec::new(),
            live_p95_ms: Vec::new(),
            images: 0,
            uncounted: 0,
            extra_text: String::new(),
            count_prompt: false,
            output_includes_thinking: false,
            thinking_cap: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filtered {
    Disabled,
    Excluded,
    MissingCaps(u32),
    ContextWindow {
        need: u32,
        window: u32,
    },
    /// Counted up to the window and over it (the count stopped there).
    OverWindow {
        window: u32,
    },
    OutputTooLong {
        want: u32,
        max: u32,
        /// the caller's max_tokens (else the task's expected answer)
        given: bool,
    },
    /// The row's thinking budget leaves no answer within a limit that counts thinking in it.
    ThinkingFillsLimit {
        thinking: u32,
        limit: u32,
    },
    LatencyUnknown,
    Latency {
        p95: f64,
        slo: f64,
    },
    Unpriced,
    /// The request has file or audio parts: its prompt tokens have no upper bound.
    CostUnbounded {
        parts: u32,
    },
    Cost {
        est: f64,
        max: f64,
    },
    BelowFloor {
        p: f32,
        floor: f32,
    },
}

impl Filtered {
    pub fn describe(&self) -> String {
        match self {
            Filtered::Disabled => "disabled in the registry".into(),
            Filtered::Excluded => {
                "excluded for this request (not allowed, cooling down or no deployment)".into()
            }
            Filtered::MissingCaps(c) => {
                let names: Vec<&str> = cap::NAMES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| c & (1 << i) != 0)
                    .map(|(_, n)| *n)
                    .collect();
                format!("lacks capability {}", names.join(", "))
            }
            Filtered::ContextWindow { need, window } => {
                format!("needs {need} tokens, context window is {window}")
            }
            Filtered::OverWindow { window } => {
                format!("needs more than its context window of {window} tokens (counted)")
            }
            Filtered::OutputTooLong { want, max, given } => {
                if *given {
                    format!("max_tokens {want} exceeds the model's max output {max}")
                } else {
                    // no max_tokens was sent: the task's expected answer is what does not fit
                    format!(
                        "the task's expected answer of {want} tokens exceeds the model's max \
                         output {max} (pass max_tokens to ask for a shorter one)"
                    )
                }
            }
            Filtered::ThinkingFillsLimit { thinking, limit } => format!(
                "it thinks for {thinking} tokens within max_tokens {limit}, which leaves no room \
                 for an answer (raise max_tokens, or ask for less thinking)"
            ),
            Filtered::LatencyUnknown => "p95 latency unknown, cannot meet a latency SLO".into(),
            Filtered::Latency { p95, slo } => format!("p95 {p95:.0} ms > SLO {slo:.0} ms"),
            Filtered::Unpriced => "unpriced: cannot check max_cost".into(),
            Filtered::CostUnbounded { parts } => format!(
                "{parts} file or audio part(s) whose tokens cannot be counted: the cost has no \
                 bound to check against max_cost"
            ),
            Filtered::Cost { est, max } => format!("est ${est:.6} > max_cost ${max:.6}"),
            Filtered::BelowFloor { p, floor } => {
                // as many places as tell the two apart: "0.80 < floor 0.80" read as a bug
                let places = (2..=6)
                    .find(|&n| format!("{p:.n$}") != format!("{floor:.n$}"))
                    .unwrap_or(6);
                format!("predicted quality {p:.places$} < floor {floor:.places$}")
            }
        }
    }
    /// The constraint this reason belongs to, for NoRouteError messages.
    pub fn constraint(&self) -> &'static str {
        match self {
            Filtered::Disabled => "disabled",
            Filtered::Excluded => "exclude",
            Filtered::MissingCaps(_) => "needs",
            Filtered::ContextWindow { .. } | Filtered::OverWindow { .. } => "context_window",
            Filtered::OutputTooLong { .. } | Filtered::ThinkingFillsLimit { .. } => {
                "max_output_tokens"
            }
            Filtered::LatencyUnknown | Filtered::Latency { .. } => "latency_slo_ms",
            Filtered::Unpriced | Filtered::CostUnbounded { .. } | Filtered::Cost { .. } => {
                "max_cost"
            }
            Filtered::BelowFloor { .. } => "quality_floor",
        }
    }
}

/// One feedback observation folded into a model's Gaussian belief over
/// theta = [bias, ability], by the Laplace step `satisfice.feedback` documents: `mean`
/// (k+1) and `cov` ((k+1)^2, the inverse precision, row-major) are updated in place from
/// `latent` = [e(x), d(x)] and a score in [0, 1]. The covariance form needs no solve: the
/// precision's rank-one gain is a Sherman-Morrison step.
/// With `scale` and `offset` the observation's logit is `scale * (θ·φ − d) + offset`: a model
/// whose served logit averages the IRT one with its embedding logistic's `lr` is updated with
/// scale 0.5 and offset lr / 2, the likelihood it is actually served by.
pub fn update_belief(
    mean: &mut [f64],
    cov: &mut [f64],
    latent: &[f64],
    score: f64,
    scale: f64,
    offset: f64,
) -> Result<(), CoreError> {
    let n = mean.len();
    if n == 0 || cov.len() != n * n || latent.len() != n {
        return Err(CoreError::Input(format!(
            "latent must hold {n} values (k skills and a difficulty) for a belief over {n} \
             parameters"
        )));
    }
    if !(0.0..=1.0).contains(&score)
        || latent.iter().any(|v| !v.is_finite())
        || !(scale.is_finite() && scale > 0.0 && offset.is_finite())
    {
        return Err(CoreError::Input(format!(
            "feedback score must be a number in [0, 1] and the latent finite, got {score}"
        )));
    }
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let phi = |i: usize| scale * if i == 0 { 1.0 } else { latent[i - 1] };
    let d = scale * latent[n - 1] - offset;
    let s_phi: Vec<f64> = (0..n)
        .map(|i| (0..n).map(|j| cov[i * n + j] * phi(j)).sum())
        .collect();
    let v: f64 = (0..n).map(|i| phi(i) * s_phi[i]).sum();
    let a0: f64 = (0..n).map(|i| mean[i] * phi(i)).sum::<f64>() - d;
    // t solves t = y - s(a0 + v t); monotone, so Newton converges
    let mut t = 0.0;
    for _ in 0..50 {
        let s = sigmoid(a0 + v * t);
        let step = (t - score + s) / (1.0 + v * s * (1.0 - s));
        t -= step;
        if step.abs() < 1e-12 {
            break;
        }
    }
    let s = sigmoid(a0 + v * t);
    let w = s * (1.0 - s);
    let g = w / (1.0 + w * v);
    for i in 0..n {
        mean[i] += t * s_phi[i];
        for j in 0..n {
            cov[i * n + j] -= g * s_phi[i] * s_phi[j];
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub row: usize,
    pub p_good: f32,
    /// NaN when unpriced.
    pub est_cost: f64,
    pub tokens_in: u32,
    /// At most this many prompt tokens: the count when one was made, else the upper bound
    /// (what a limit decided on the estimate relied on).
    pub tokens_in_max: u32,
    pub tokens_in_exact: bool,
    pub by_rule: bool,
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// Ranked: primary first, then fallbacks; only the first `sorted` are in final order
    /// (`ranked` orders them all).
    pub candidates: Vec<Candidate>,
    pub sorted: usize,
    pub ranking: Ranking,
    /// The rows filtered out but those disabled in the registry (`disabled`), in row
    /// order, then those below the floor; `all_filtered` puts the disabled ones back.
    pub filtered: Vec<(usize, Filtered)>,
    /// The table's disabled rows, filtered out of every plan.
    pub disabled: Arc<[usize]>,
    pub rule: Option<usize>,
    /// No model met the floor: candidates are ranked by P(good) instead and say so.
    pub below_floor: bool,
    pub tokens_out: u32,
    /// File and audio parts the prompt's token counts leave out (`Constraints::uncounted`).
    pub uncounted: u32,
    pub info: PromptInfo,
    /// The prompt's embedding when the table has models with an embedding logistic (what
    /// feedback on such a model needs besides the latent).
    pub embedding: Option<[i8; crate::embed::DIM]>,
    /// The predictor's `[e(x), d(x)]` for this prompt (what feedback updates are made with).
    pub latent: Vec<f32>,
}

impl Plan {
    /// Every row filtered out, in row order, those below the floor last.
    pub fn all_filtered(&self) -> Vec<(usize, Filtered)> {
        let cut = self
            .filtered
            .iter()
            .position(|(_, f)| matches!(f, Filtered::BelowFloor { .. }))
            .unwrap_or(self.filtered.len());
        let mut out: Vec<(usize, Filtered)> = self.filtered[..cut]
            .iter()
            .cloned()
            .chain(self.disabled.iter().map(|&i| (i, Filtered::Disabled)))
            .collect();
        out.sort_unstable_by_key(|&(i, _)| i);
        out.extend_from_slice(&self.filtered[cut..]);
        out
    }

    /// Every candidate in rank order (the tail beyond `sorted` is ordered here, on read).
    pub fn ranked(&self) -> std::borrow::Cow<'_, [Candidate]> {
        self.first(usize::MAX)
    }

    /// The first `n` candidates in rank order: a slice of the sorted head when it holds
    /// them, else the tail is ordered too (on a copy).
    pub fn first(&self, n: usize) -> std::borrow::Cow<'_, [Candidate]> {
        let len = self.candidates.len();
        if n.min(len) <= self.sorted {
            return std::borrow::Cow::Borrowed(&self.candidates[..n.min(len)]);
        }
        let mut all = self.candidates.clone();
        let below = self.below_floor;
        all[self.sorted..].sort_unstable_by_key(|c| self.ranking.cand_key(below, c));
        all.truncate(n);
        std::borrow::Cow::Owned(all)
    }
}

/// How the candidates that passed the filters are ordered: the one ranking that `plan`
/// serves and that `pick` (the batch entry point for `eval` and `calibrate`) replays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ranking {
    /// Cheapest with P(good) >= floor (more likely first among equal costs); when none
    /// reaches the floor, by P(good).
    Floor(f64),
    /// Highest P(good) − λ·USD (cheaper first among equal scores); λ = ∞ is cheapest first.
    Lambda(f64),
}

/// How many leading candidates `plan` puts in order: a request reads its primary and
/// fallbacks, and its record the first 16 (`decision.RECORDED`), so with hundreds of models
/// a full sort would be most of the route's cost, and with the bundled 43 rows sorting 32
/// of them had been a sixth of a short prompt's. The rest are ordered only when read
/// (`Plan::first`).
pub const HEAD: usize = 16;

/// Append to `out` the candidates `keyed` names (a key and an index into `cands`), the
/// `HEAD` with the smallest keys first, in order (the rest after them, unordered); returns
/// how many are in order. Keys are unique (they end with the row), so the result is the
/// full sort's prefix. Keys are computed once per candidate: comparing integers is what
/// makes selecting among thousands of models cheap. Written straight into the plan's
/// vector: a vector of its own had been one more allocation, copy and free a route.
fn sort_head<K: Ord + Copy>(
    keyed: &mut [(K, usize)],
    cands: &[Candidate],
    out: &mut Vec<Candidate>,
) -> usize {
    let n = if keyed.len() > HEAD {
        keyed.select_nth_unstable(HEAD - 1);
        keyed[..HEAD].sort_unstable();
        HEAD
    } else {
        keyed.sort_unstable();
        keyed.len()
    };
    out.extend(keyed.iter().map(|&(_, i)| cands[i]));
    n
}

/// A candidate's sort key (`Ranking::key`): smaller first.
type Key = (u64, u64, usize);

thread_local! {
    /// `plan`'s two vectors of the length of the registry that do not outlive it (the rows
    /// that passed, their sort keys), kept for the thread's next plan: of 1.5 KB at the
    /// bundled size, past what the allocator keeps at hand per thread, each allocation and
    /// free had been ~500 instructions a route. They keep the capacity of the largest
    /// registry planned on the thread (32 bytes a row each).
    static PASSING: Cell<Vec<Candidate>> = const { Cell::new(Vec::new()) };
    static KEYED: Cell<Vec<(Key, usize)>> = const { Cell::new(Vec::new()) };
}

/// `f64::total_cmp`'s order as an unsigned integer (the same bit trick it uses).
fn ord(x: f64) -> u64 {
    let b = x.to_bits() as i64;
    ((b ^ (((b >> 63) as u64) >> 1) as i64) as u64) ^ (1 << 63)
}

/// Unpriced models sort after every priced one: their cost is unknown, not zero.
fn cost_key(cost: f64) -> f64 {
    if cost.is_nan() {
        f64::INFINITY
    } else {
        cost
    }
}

impl Ranking {
    /// The sort key of a candidate that passed, (p_good, est_cost, row): smaller first.
    fn key(self, p: f64, cost: f64, row: usize) -> Key {
        let c = cost_key(cost);
        match self {
            Ranking::Lambda(lam) if lam.is_finite() => (!ord(p - lam * c.min(1e12)), ord(c), row),
            _ => (ord(c), !ord(p), row),
        }
    }

    /// `a` before `b`? (p_good, est_cost, row) of two candidates that both passed.
    fn cmp(self, a: (f64, f64, usize), b: (f64, f64, usize)) -> Ordering {
        self.key(a.0, a.1, a.2).cmp(&self.key(b.0, b.1, b.2))
    }

    fn passes(self, p: f64) -> bool {
        match self {
            Ranking::Floor(floor) => p >= floor,
            Ranking::Lambda(_) => true,
        }
    }

    /// The candidate order `plan` serves: by this ranking, or, when nothing reached the
    /// floor (`below_floor`), by P(good).
    fn cand_key(self, below_floor: bool, c: &Candidate) -> Key {
        if below_floor {
            (!ord(c.p_good as f64), 0, c.row)
        } else {
            self.key(c.p_good as f64, c.est_cost, c.row)
        }
    }

    /// Append `cands` to `out`, ordered as far as a request reads them (see `sort_head`).
    /// Under a floor, those below it are left out and handed to `below`, unless nothing
    /// else is left (and no rule chose a model): then all are kept, ordered by P(good), and
    /// the first value is true ("below floor"). The second is how many leading candidates
    /// are in their final order.
    fn order(
        self,
        cands: &[Candidate],
        rule_chose: bool,
        out: &mut Vec<Candidate>,
        mut below: impl FnMut(&Candidate),
    ) -> (bool, usize) {
        let passes = |c: &Candidate| self.passes(c.p_good as f64);
        // (a λ ranking passes every candidate; under a floor most usually pass, and the
        // first that does ends the search)
        let all_below = !rule_chose && !cands.is_empty() && !cands.iter().any(passes);
        let mut keyed = KEYED.take();
        keyed.clear();
        keyed.reserve(cands.len());
        if all_below {
            let by_p = cands.iter().enumerate();
            keyed.extend(by_p.map(|(i, c)| (self.cand_key(true, c), i)));
        } else {
            // Keyed as they are sifted, without a vector of those below or a second pass
            // over the rest: the ones below go to `below` in candidate order.
            for (i, c) in cands.iter().enumerate() {
                if passes(c) {
                    keyed.push((self.cand_key(false, c), i));
                } else {
                    below(c);
                }
            }
        }
        let n = sort_head(&mut keyed, cands, out);
        KEYED.set(keyed);
        (all_below, n)
    }

    /// The primary among one prompt's models: `p[j]` is P(good), `cost[j]` the estimated USD
    /// (NaN unpriced); a model with a non-finite `p` did not pass the filters. `forced`: a
    /// rule's choice. None when nothing passed. The same order as `plan`, without sorting.
    pub fn pick(self, p: &[f64], cost: &[f64], forced: Option<usize>) -> Option<usize> {
        if let Some(f) = forced {
            return Some(f);
        }
        let live = || (0..p.len()).filter(|&j| p[j].is_finite());
        let best = live()
            .filter(|&j| self.passes(p[j]))
            .min_by(|&a, &b| self.cmp((p[a], cost[a], a), (p[b], cost[b], b)));
        best.or_else(|| live().min_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b))))
    }
}

/// Per row, `[bias, ability_0..ability_{k-1}]` (stride k+1), in blocks of `BLOCK_ROWS`
/// rows shared between copies: a feedback update copies one block and the blocks' pointers,
/// where copying every row's had made `feedback()` grow with the registry (2,000 models:
/// 1.9 µs a copy against 0.45 at the bundled size).
#[derive(Clone)]
pub struct Params {
    blocks: Vec<Arc<[f32]>>,
    stride: usize,
}

impl Params {
    const BLOCK_ROWS: usize = 64;

    fn new(flat: &[f32], stride: usize) -> Params {
        let blocks = flat
            .chunks(Self::BLOCK_ROWS * stride)
            .map(Arc::from)
            .collect();
        Params { blocks, stride }
    }

    /// One row's `[bias, ability..]`.
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        let at = (i % Self::BLOCK_ROWS) * self.stride;
        &self.blocks[i / Self::BLOCK_ROWS][at..at + self.stride]
    }

    fn set(&mut self, i: usize, bias: f32, ability: &[f32]) {
        let at = (i % Self::BLOCK_ROWS) * self.stride;
        let block = &mut self.blocks[i / Self::BLOCK_ROWS];
        let mut copy = block.to_vec();
        copy[at] = bias;
        copy[at + 1..at + self.stride].copy_from_slice(ability);
        *block = copy.into();
    }
}

/// The compiled routing table. What feedback changes (each model's learned parameters) is
/// `Params`; the rest is shared between a table and the copies `with_model` makes, so a
/// feedback update copies one block of parameters, not the rows, rules and predictor.
#[derive(Clone)]
pub struct DispatchTable {
    pub rows: Arc<[ModelRow]>,
    /// Rows disabled in the registry, and the rest: a plan walks the rest alone, so that
    /// a registry of thousands of disabled rows routes as fast as one without them.
    disabled: Arc<[usize]>,
    live: Arc<[usize]>,
    pub params: Params,
    pub predictor: Arc<Predictor>,
    pub emb: Option<Arc<EmbWeights>>,
    pub rules: Arc<[Rule]>,
    pub featurizer: FeaturizerConfig,
    /// Expected completion tokens per task when the caller gives no max_tokens.
    pub expected_out: [u32; 8],
}

/// Counts of one request's text, made only as far as a decision needs: per base encoding,
/// a tally that goes on from where the last decision stopped, so the counting for every
/// model together costs about the largest limit, not their sum.
struct Counter<'a> {
    messages: &'a [Message],
    /// `Constraints::extra_text`, counted after the messages.
    extra: &'a str,
    /// Per base encoding: the text being counted (messages, then `extra`), the byte in it
    /// where counting stopped, and the tally so far.
    at: [(usize, usize, Tally); 2],
}

impl Counter<'_> {
    /// The count in `base` if it is at most `limit`, else None. Costs O(limit). Text that
    /// has nowhere to cut exactly is cut by force, and the tally then has a slack: Some
    /// only when the count plus its slack fits.
    fn upto(&mut self, base: Family, limit: usize) -> Option<Tally> {
        let (messages, extra) = (self.messages, self.extra);
        let texts = || {
            messages
                .iter()
                .map(|m| m.content.as_str())
                .chain((!extra.is_empty()).then_some(extra))
        };
        let k = usize::from(base == Family::Cl100k);
        let (next, at, tally) = &mut self.at[k];
        for text in texts().skip(*next) {
            tokens::count_on(text, at, base, true, tally, limit);
            if tally.exceeds(limit) {
                break;
            }
            (*next, *at) = (*next + 1, 0);
        }
        if !tally.exceeds(limit) {
            return Some(*tally);
        }
        // Only the forced cuts' slack crosses the limit (the pieces' sum may be over or
        // under the whole count by the slack): a text of at most EXACT_RECOUNT
        // bytes is counted again whole and exactly (no forced cut), so a prompt that fits
        // is not refused for the slack; a longer one stays on the safe side.
        let bytes: usize = texts().map(str::len).sum();
        if tally.slack == 0 || tally.tokens > limit + tally.slack || bytes > EXACT_RECOUNT {
            return None;
        }
        // counted whole (at most EXACT_RECOUNT bytes) whether it fits or not, and kept:
        // every later limit reads it (a count that stopped at the limit, kept or not, had
        // every further row in the same slack count the whole text again: 2,000 rows of
        // one window, 1 s a route)
        let mut exact = Tally::default();
        for text in texts() {
            tokens::count_on(text, &mut 0, base, false, &mut exact, usize::MAX);
        }
        self.at[k] = (usize::MAX, 0, exact);
        (!exact.exceeds(limit)).then_some(exact)
    }
}

/// The prompt's tokens as the rows of one tokenizer family read them (`plan_features`).
#[derive(Clone, Copy)]
struct FamilyTokens {
    /// The point estimate, within the bounds.
    t_in: f64,
    /// At most this many: the upper bound, or the estimate if over it.
    t_max: f64,
    lo: f64,
    hi: f64,
    /// Tokens besides the text's: the chat overhead and the images' upper bound.
    fixed: f64,
    /// The encoding the family's counts are made in, and its count's ratio to it.
    base: Family,
    ratio: f64,
    /// A count in `base` is the family's own exact count (no ratio, no images).
    exact: bool,
}

/// The prompt's figures in `base` (`PromptInfo::figures`), worked out once per plan.
fn figures<'a>(
    by_base: &'a mut [Option<BaseFigures>; 2],
    info: &PromptInfo,
    base: Family,
) -> &'a BaseFigures {
    by_base[usize::from(base == Family::Cl100k)].get_or_insert_with(|| info.figures(base))
}

/// The most text `Counter::upto` counts again whole and exactly when only a forced cut's
/// slack stands between a prompt and its limit: a pre-token this long costs about 30 ms
/// (a run of 200,000 x's: 23 ms of CPU). At 64 KB, a run of 66,000 x's that fit a window
/// to the token was refused by it (found by `tests/test_estimate_safety.py`, whose runs go
/// to 200,000).
const EXACT_RECOUNT: usize = 256 * 1024;

impl DispatchTable {
    pub fn new(
        rows: Vec<ModelRow>,
        params: Vec<f32>,
        predictor: Predictor,
        emb: Option<EmbWeights>,
        rules: Vec<Rule>,
        featurizer: FeaturizerConfig,
        expected_out: [u32; 8],
    ) -> Result<Self, CoreError> {
        if rows.is_empty() {
            return Err(CoreError::Config("the registry has no models".into()));
        }
        if predictor.dim != featurizer.dim() {
            return Err(CoreError::Config(format!(
                "predictor expects {} features but the featurizer makes {}; retrain or use \
                 the predictor's hash_buckets",
                predictor.dim,
                featurizer.dim()
            )));
        }
        let stride = predictor.k + 1;
        if params.len() != rows.len() * stride {
            return Err(CoreError::Config(format!(
                "{} model parameters for {} models: each needs a bias and {} ability values",
                params.len(),
                rows.len(),
                predictor.k
            )));
        }
        if let Some(i) = params.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::Config(format!(
                "model {:?}: its bias and ability values must be finite",
                rows[i / stride].id
            )));
        }
        if let Some(e) = &emb {
            if e.has.len() != rows.len() || e.w.len() != rows.len() * EmbWeights::STRIDE {
                return Err(CoreError::Config(format!(
                    "embedding weights: need {} per model for {} models",
                    EmbWeights::STRIDE,
                    rows.len()
                )));
            }
            if let Some(i) = e.w.iter().position(|v| !v.is_finite()) {
                return Err(CoreError::Config(format!(
                    "model {:?}: its embedding weights must be finite",
                    rows[i / EmbWeights::STRIDE].id
                )));
            }
        }
        for rule in &rules {
            if let Some(&bad) = rule.models.iter().find(|&&i| i >= rows.len()) {
                return Err(CoreError::Config(format!(
                    "rule {:?} names model row {bad}, the table has {}",
                    rule.name,
                    rows.len()
                )));
            }
        }
        let (disabled, live): (Vec<usize>, Vec<usize>) =
            (0..rows.len()).partition(|&i| rows[i].disabled);
        Ok(Self {
            rows: rows.into(),
            disabled: disabled.into(),
            live: live.into(),
            params: Params::new(&params, stride),
            predictor: Arc::new(predictor),
            emb: emb.filter(|e| e.has.iter().any(|&h| h)).map(Arc::new),
            rules: rules.into(),
            featurizer,
            expected_out,
        })
    }

    /// A copy with one model's learned parameters replaced (online feedback): the rest of
    /// the table is reused as compiled, so no Python rebuilds every row.
    pub fn with_model(&self, row: usize, bias: f32, ability: Vec<f32>) -> Result<Self, CoreError> {
        if row >= self.rows.len() {
            return Err(CoreError::Config(format!(
                "model row {row}: the table has {}",
                self.rows.len()
            )));
        }
        if ability.len() != self.predictor.k
            || !bias.is_finite()
            || ability.iter().any(|a| !a.is_finite())
        {
            return Err(CoreError::Config(format!(
                "model {:?}: need a finite bias and {} finite ability values",
                self.rows[row].id, self.predictor.k
            )));
        }
        let mut t = self.clone();
        t.params.set(row, bias, &ability);
        Ok(t)
    }

    /// Plan many prompts with no quality floor: row-major (n, models) P(good) (−∞ where the
    /// model was filtered out), estimated USD (NaN unpriced, +∞ filtered) and the row a
    /// matching rule puts first (−1 if none). `Ranking::pick` over these rows is the same
    /// choice `plan` makes for each prompt under a floor or λ.
    pub fn plan_matrix(
        &self,
        prompts: &[Vec<Message>],
        c: &Constraints,
    ) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
        let m = self.rows.len();
        let mut p = vec![f64::NEG_INFINITY; prompts.len() * m];
        let mut cost = vec![f64::INFINITY; prompts.len() * m];
        let mut forced = vec![-1i64; prompts.len()];
        let c = Constraints {
            quality_floor: 0.0,
            lambda: None,
            ..c.clone()
        };
        for (i, msgs) in prompts.iter().enumerate() {
            let plan = self.plan(msgs, &c);
            for cand in &plan.candidates {
                p[i * m + cand.row] = cand.p_good as f64;
                cost[i * m + cand.row] = cand.est_cost;
            }
            if let Some(first) = plan.candidates.first().filter(|c| c.by_rule) {
                forced[i] = first.row as i64;
            }
        }
        (p, cost, forced)
    }

    pub fn plan(&self, messages: &[Message], c: &Constraints) -> Plan {
        let mut x = vec![0f32; self.featurizer.dim()];
        // The embedding only when some model has a logistic on it (a trained predictor),
        // summed in the featurizer's own scan of the words.
        let table = self.emb.as_ref().and_then(|_| crate::embed::table().ok());
        let mut acc = crate::embed::Sum::default();
        let info = features::featurize_and_embed(
            messages,
            &self.featurizer,
            &mut x,
            table.map(|t| (t, &mut acc)),
        );
        let e = table.map(|_| crate::embed::finish(&acc));
        self.plan_features(messages, &x, info, e, c)
    }

    pub fn plan_features(
        &self,
        messages: &[Message],
        x: &[f32],
        info: PromptInfo,
        embedding: Option<[i8; crate::embed::DIM]>,
        c: &Constraints,
    ) -> Plan {
        let latent = self.predictor.latent(x);
        let u = embedding.map(|e| e.map(|v| v as f32 / 127.0));
        let emb = self.emb.as_deref().zip(u);
        let tokens_out = c
            .max_output_tokens
            .unwrap_or(self.expected_out[info.task as usize]);
        let total_limit = c.output_includes_thinking && c.max_output_tokens.is_some();
        let overhead =
            (messages.len() * tokens::PER_MESSAGE_OVERHEAD + tokens::PER_REQUEST_OVERHEAD) as f64;
        let mut info = info;
        if !c.extra_text.is_empty() {
            info.counts.add(&tokens::char_counts(&c.extra_text));
            info.counts.counts[tokens::est::BIAS] = 1.0; // one text's intercept, not two
        }
        let mut counter = Counter {
            messages,
            extra: &c.extra_text,
            at: Default::default(),
        };
        let mut by_base = [None; 2];
        let mut by_family: [Option<FamilyTokens>; Family::ALL.len()] = [None; Family::ALL.len()];
        // (the thread's vector from its last plan, see `PASSING`)
        let mut passing = PASSING.take();
        passing.clear();
        passing.reserve(self.live.len());
        // every row ends in `passing` or here: room for them all at once, not a doubling
        // per few rows
        let mut filtered = Vec::with_capacity(self.live.len());
        for &i in self.live.iter() {
            let r = &self.rows[i];
            let lowered;
            let r = match c.thinking_cap {
                Some(cap) if r.thinking_fixed && r.thinking > cap => {
                    lowered = r.lowered(cap);
                    &lowered
                }
                _ => r,
            };
            // the row's thinking within the caller's limit, when the limit counts it
            let within = if total_limit { r.thinking } else { 0 };
            let reason = 'check: {
                if c.exclude.get(i).copied().unwrap_or(false) {
                    break 'check Some(Filtered::Excluded);
                }
                let missing = c.required_caps & !r.caps;
                if missing != 0 {
                    break 'check Some(Filtered::MissingCaps(missing));
                }
                if tokens_out > r.max_output + within {
                    break 'check Some(Filtered::OutputTooLong {
                        want: tokens_out,
                        max: r.max_output + within,
                        given: c.max_output_tokens.is_some(),
                    });
                }
                if r.thinking_fixed && within > 0 && tokens_out <= within {
                    break 'check Some(Filtered::ThinkingFillsLimit {
                        thinking: within,
                        limit: tokens_out,
                    });
                }
                if c.latency_slo_ms.is_finite() {
                    let p95 = match c.live_p95_ms.get(i) {
                        Some(live) if live.is_finite() => *live,
                        _ => r.p95_ms,
                    };
                    if !p95.is_finite() {
                        break 'check Some(Filtered::LatencyUnknown);
                    }
                    if p95 > c.latency_slo_ms {
                        break 'check Some(Filtered::Latency {
                            p95,
                            slo: c.latency_slo_ms,
                        });
                    }
                }
                None
            };
            if let Some(f) = reason {
                filtered.push((i, f));
                continue;
            }
            // A limit is decided on the estimate only when its bounds agree (the upper bound
            // is the byte count, which no byte-level BPE count exceeds); otherwise on the
            // exact count, made only as far as the limit (see `Counter`).
            // the prompt's tokens as the row's family reads them, worked out for the first
            // row of each family (every row of it had done the same arithmetic again)
            let FamilyTokens {
                mut t_in,
                mut t_max,
                lo,
                hi,
                fixed,
                base,
                ratio,
                exact: exact_family,
            } = *by_family[r.family as usize].get_or_insert_with(|| {
                let img = c.images as f64;
                let (base, ratio) = r.family.base();
                // one estimate per tokenizer family, however many rows share it, from
                // figures worked out once per base encoding
                let (est, lo, hi) = info.bounds(figures(&mut by_base, &info, base), ratio);
                let img_max = image_max(r.family);
                let (lo, hi) = (lo as f64 + img * IMAGE_TOKENS.0, hi as f64 + img * img_max);
                // the estimate is no bound: where it falls outside the bounds, they are nearer
                let t_in = (est as f64 + img * IMAGE_TOKENS.1).max(lo).min(hi);
                FamilyTokens {
                    t_in,
                    t_max: hi.max(t_in),
                    lo,
                    hi,
                    // images have no exact count: the safe side of their range
                    fixed: overhead + img * img_max,
                    base,
                    ratio: ratio as f64,
                    exact: r.family.is_exact() && c.images == 0,
                }
            });
            // the answer's room (the wire adds the row's thinking to it): under a limit that
            // holds the thinking, less its room, below 0 for adaptive thinking the limit
            // cuts (then the window and the cost, which add the room back, read the limit)
            let out = tokens_out as f64 - within as f64;
            let counted = |n: usize| (n as f64 * ratio).round() + fixed;
            // (point, upper) tokens of a tally; the point no lower than the lower bound
            let tallied = |n: Tally| {
                let upper = counted(n.tokens + n.slack);
                (counted(n.tokens).max(lo).min(upper), upper)
            };
            let base_limit = |room: f64| {
                let x = ((room - fixed) / ratio).floor();
                (x >= 0.0).then(|| x.min(u32::MAX as f64) as usize)
            };
            let mut is_exact = false;
            let window = r.context_window as f64;
            // Counted as far as the window (what the window's test reads, forced cuts' slack
            // and all), near it, or for every model with `count_prompt`: a count past the
            // window would only refuse what the window refuses.
            if (c.count_prompt || hi + out > window) && lo + out <= window {
                match base_limit(window - out).and_then(|l| counter.upto(base, l)) {
                    Some(n) => {
                        (t_in, t_max) = tallied(n);
                        is_exact = exact_family && n.slack == 0;
                    }
                    // within the window by the byte bound all the same (a forced cut's
                    // slack took the count over): as routed without the count
                    None if hi + out <= window => {}
                    None => {
                        filtered.push((
                            i,
                            Filtered::OverWindow {
                                window: r.context_window,
                            },
                        ));
                        continue;
                    }
                }
            }
            if t_in + out > window {
                filtered.push((
                    i,
                    Filtered::ContextWindow {
                        need: (t_in + out).round() as u32,
                        window: r.context_window,
                    },
                ));
                continue;
            }
            let mut cost = if r.priced() {
                r.cost(t_in, out)
            } else {
                f64::NAN
            };
            if c.max_cost.is_finite() {
                if !r.priced() {
                    filtered.push((i, Filtered::Unpriced));
                    continue;
                }
                if c.uncounted > 0 {
                    let parts = c.uncounted;
                    filtered.push((i, Filtered::CostUnbounded { parts }));
                    continue;
                }
                // The cap, plus float rounding: a prompt whose cost is the cap to the
                // last digit (969 + 50 tokens at $1/M against $0.001019) summed to one ulp
                // over it, and its room floored to one token short.
                let cap = c.max_cost * (1.0 + 1e-12);
                if r.cost(t_max, out) > cap && r.cost(lo, out) <= cap {
                    let room = r.max_tokens_within(cap, out);
                    match base_limit(room).and_then(|l| counter.upto(base, l)) {
                        Some(n) => {
                            (t_in, t_max) = tallied(n);
                            is_exact = exact_family && n.slack == 0;
                            cost = r.cost(t_in, out);
                        }
                        None => {
                            let past = base_limit(room).map_or(0, |l| l + 1);
                            let est = r.cost(counted(past).max(t_in), out);
                            filtered.push((
                                i,
                                Filtered::Cost {
                                    est,
                                    max: c.max_cost,
                                },
                            ));
                            continue;
                        }
                    }
                }
                if cost > cap {
                    filtered.push((
                        i,
                        Filtered::Cost {
                            est: cost,
                            max: c.max_cost,
                        },
                    ));
                    continue;
                }
            }
            let mut logit = self.predictor.logit(&latent, self.params.row(i));
            if let Some((e, u)) = &emb {
                if e.has[i] {
                    logit = (logit + e.logit(i, u)) / 2.0;
                }
            }
            passing.push(Candidate {
                row: i,
                p_good: sigmoid(logit),
                est_cost: cost,
                // t_in >= 0: adding a half and truncating rounds as round() does, without
                // a libm call per model (x86-64's baseline has no rounding instruction).
                tokens_in: (t_in + 0.5) as u32,
                tokens_in_max: ceil_u32(t_max),
                tokens_in_exact: is_exact,
                by_rule: false,
            });
        }

        let (base, ratio) = Family::O200k.base();
        let tokens_ref = info.estimate(figures(&mut by_base, &info, base), ratio);
        let rule = self.rules.iter().position(|r| r.matches(&info, tokens_ref));
        let mut ranked: Vec<Candidate> = Vec::with_capacity(passing.len());
        if let Some(ri) = rule {
            for &m in &self.rules[ri].models {
                if let Some(pos) = passing.iter().position(|c| c.row == m) {
                    let mut cand = passing.swap_remove(pos);
                    cand.by_rule = true;
                    ranked.push(cand);
                }
            }
        }
        let ranking = match c.lambda {
            Some(lam) => Ranking::Lambda(lam),
            None => Ranking::Floor(c.quality_floor as f64),
        };
        let by_rule = ranked.len();
        let (below_floor, sorted) = ranking.order(&passing, by_rule > 0, &mut ranked, |cnd| {
            filtered.push((
                cnd.row,
                Filtered::BelowFloor {
                    p: cnd.p_good,
                    floor: c.quality_floor,
                },
            ))
        });
        PASSING.set(passing);
        Plan {
            candidates: ranked,
            sorted: by_rule + sorted,
            ranking,
            filtered,
            disabled: self.disabled.clone(),
            rule,
            below_floor,
            tokens_out,
            uncounted: c.uncounted,
            info,
            embedding,
            latent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::DEFAULT_BUCKETS;

    /// A row and its bias (one ability, 0).
    fn row(id: &str, pin: f64, pout: f64, bias: f32) -> (ModelRow, f32) {
        let r = ModelRow {
            id: id.into(),
            price_in: pin,
            price_out: pout,
            context_window: 8000,
            max_output: 4096,
            caps: 0,
            p95_ms: 1000.0,
            family: Family::O200k,
            disabled: false,
            long_above: f64::INFINITY,
            long_in: f64::NAN,
            long_out: f64::NAN,
            fee: 0.0,
            thinking: 0,
            thinking_fixed: false,
            thinking_rate: 0.0,
        };
        (r, bias)
    }

    fn table(rows: Vec<(ModelRow, f32)>, rules: Vec<Rule>) -> DispatchTable {
        let cfg = FeaturizerConfig {
            hash_buckets: DEFAULT_BUCKETS,
            ..Default::default()
        };
        let p = Predictor::new(cfg.dim(), 1, vec![0.0; cfg.dim() * 2], vec![0.0, 0.0]).unwrap();
        let params = rows.iter().flat_map(|&(_, bias)| [bias, 0.0]).collect();
        let rows = rows.into_iter().map(|(r, _)| r).collect();
        DispatchTable::new(rows, params, p, None, rules, cfg, [256; 8]).unwrap()
    }

    #[test]
    fn a_refused_exact_recount_is_kept_for_later_limits() {
        // Found by review: a recount that found the prompt over its limit was thrown away.
        let text = "x".repeat(200_000);
        let exact = tokens::count(&text, Family::O200k);
        let messages = msg(&text);
        let mut counter = Counter {
            messages: &messages,
            extra: "",
            at: Default::default(),
        };
        // just under the exact count, within the forced cuts' slack: recounted, refused
        assert_eq!(counter.upto(Family::O200k, exact - 1), None);
        // the next row's limit reads the exact count, not the text again
        let whole = Tally {
            tokens: exact,
            slack: 0,
        };
        assert_eq!(counter.at[0], (usize::MAX, 0, whole));
        assert_eq!(counter.upto(Family::O200k, exact - 1), None);
        assert_eq!(
            counter.upto(Family::O200k, exact).map(|t| t.tokens),
            Some(exact)
        );
    }

    #[test]
    fn disabled_rows_are_listed_in_row_order_without_being_walked() {
        let mut rows: Vec<(ModelRow, f32)> = (0..5)
            .map(|i| row(&format!("m{i}"), 1.0, 1.0, if i == 3 { 5.0 } else { 0.0 }))
            .collect();
        rows[0].0.disabled = true;
        rows[2].0.disabled = true;
        let t = table(rows, vec![]);
        let c = Constraints {
            exclude: vec![false, true, false, false, false],
            quality_floor: 0.6,
            ..Constraints::default()
        };
        let p = t.plan(&msg("hi"), &c);
        assert_eq!(
            p.candidates.iter().map(|c| c.row).collect::<Vec<_>>(),
            vec![3]
        );
        let all = p.all_filtered();
        let rows_and_kinds: Vec<_> = all.iter().map(|(i, f)| (*i, f.constraint())).collect();
        assert_eq!(
            rows_and_kinds,
            vec![
                (0, "disabled"),
                (1, "exclude"),
                (2, "disabled"),
                (4, "quality_floor")
            ]
        );
        assert!(p.filtered.iter().all(|(_, f)| *f != Filtered::Disabled));
    }

    fn msg(s: &str) -> Vec<Message> {
        vec![Message {
            role: "user".into(),
            content: s.into(),
        }]
    }

    #[test]
    fn ceil_u32_is_ceil_as_u32() {
        let edges = [
            f64::NAN,
            f64::NEG_INFINITY,
            -1.5,
            -1.0,
            -0.5,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            0.5,
            1.0,
            1.0 + f64::EPSILON,
            8.0,
            8.5,
            4_294_967_294.5,
            u32::MAX as f64,
            u32::MAX as f64 + 0.5,
            1e300,
            f64::INFINITY,
        ];
        let steps = (0..20_000).map(|i| i as f64 * 0.37 - 100.0);
        for x in edges.into_iter().chain(steps) {
            assert_eq!(ceil_u32(x), x.ceil() as u32, "{x}");
        }
    }

    #[test]
    fn head_is_the_full_sorts_prefix() {
        // 300 rows with repeated prices and biases (ties), some unpriced: the partly sorted
        // plan must read, in full and as a head, exactly as a full sort would.
        let rows: Vec<(ModelRow, f32)> = (0..300)
            .map(|i| {
                let price = if i % 17 == 0 {
                    f64::NAN
                } else {
                    (i % 23) as f64 * 0.1
                };
                row(&format!("m{i}"), price, price * 3.0, (i % 7) as f32 - 3.0)
            })
            .collect();
        let t = table(rows, vec![]);
        for (floor, lambda) in [(0.0, None), (0.6, None), (0.99, None), (0.0, Some(50.0))] {
            let c = Constraints {
                quality_floor: floor,
                lambda,
                ..Default::default()
            };
            let plan = t.plan(&msg("what is two plus two?"), &c);
            let ranked = plan.ranked();
            let mut full = plan.candidates.clone();
            full.sort_by_key(|c| plan.ranking.cand_key(plan.below_floor, c));
            let rows = |v: &[Candidate]| v.iter().map(|c| c.row).collect::<Vec<_>>();
            assert_eq!(rows(&ranked), rows(&full));
            assert!(plan.sorted >= HEAD.min(full.len()));
            assert_eq!(
                rows(&plan.candidates[..plan.sorted]),
                rows(&full[..plan.sorted])
            );
        }
    }

    #[test]
    fn cheapest_above_floor() {
        let t = table(
            vec![
                row("big", 10.0, 30.0, 3.0),
                row("small", 0.1, 0.2, -1.0),
                row("mid", 1.0, 2.0, 1.0),
            ],
            vec![],
        );
        let c = Constraints {
            quality_floor: 0.7,
            ..Default::default()
        };
        let p = t.plan(&msg("hi"), &c);
        assert_eq!(t.rows[p.candidates[0].row].id, "mid");
        assert_eq!(t.rows[p.candidates[1].row].id, "big");
        assert!(p
            .filtered
            .iter()
            .any(|(i, f)| t.rows[*i].id == "small" && matches!(f, Filtered::BelowFloor { .. })));
    }

    #[test]
    fn unpriced_never_free() {
        let t = table(
            vec![
                row("free?", f64::NAN, f64::NAN, 3.0),
                row("paid", 1.0, 1.0, 3.0),
            ],
            vec![],
        );
        let p = t.plan(&msg("hi"), &Constraints::default());
        assert_eq!(t.rows[p.candidates[0].row].id, "paid");
        let c = Constraints {
            max_cost: 1.0,
            ..Default::default()
        };
        let p = t.plan(&msg("hi"), &c);
        assert_eq!(p.filtered, vec![(0, Filtered::Unpriced)]);
    }

    #[test]
    fn a_limit_that_holds_thinking_leaves_each_row_its_answer() {
        // A row that thinks for 1,000 tokens (taken off its 4,096 max output and 8,000
        // window, as the policy builds it) beside one that does not.
        let mut thinks = row("thinks", 1.0, 1.0, 0.0);
        thinks.0.thinking = 1000;
        thinks.0.thinking_fixed = true;
        thinks.0.max_output -= 1000;
        thinks.0.context_window -= 1000;
        let t = table(vec![thinks, row("plain", 1.0, 1.0, 0.0)], vec![]);
        let plan = |limit: u32, total: bool| {
            let c = Constraints {
                max_output_tokens: Some(limit),
                output_includes_thinking: total,
                ..Default::default()
            };
            t.plan(&msg("hi"), &c)
        };
        // the answer's limit: the budget on top, past the max output
        let p = plan(4000, false);
        assert_eq!(p.filtered.len(), 1);
        assert!(matches!(
            p.filtered[0],
            (0, Filtered::OutputTooLong { max: 3096, .. })
        ));
        // the limit holds both: the budget within it, the cost that of 4,000 tokens
        let p = plan(4000, true);
        assert!(p.filtered.is_empty());
        // (the row's answer is 3,000 tokens: its thinking is priced in its fee, as the
        // policy builds it)
        let cost = |row: usize| p.candidates.iter().find(|c| c.row == row).unwrap().est_cost;
        assert!((cost(0) - (cost(1) - 1000.0 / 1e6)).abs() < 1e-12);
        // the budget fills the limit: no room for an answer, said so
        let p = plan(1000, true);
        assert_eq!(
            p.filtered,
            vec![(
                0,
                Filtered::ThinkingFillsLimit {
                    thinking: 1000,
                    limit: 1000
                }
            )]
        );
        assert!(p.filtered[0].1.describe().contains("no room for an answer"));
        // adaptive thinking's room is no budget: the limit cuts it, the row stays
        let mut adaptive = row("adaptive", 1.0, 1.0, 0.0);
        adaptive.0.thinking = 1000;
        adaptive.0.max_output -= 1000;
        adaptive.0.context_window -= 1000;
        let t = table(vec![adaptive], vec![]);
        let c = Constraints {
            max_output_tokens: Some(1000),
            output_includes_thinking: true,
            ..Default::default()
        };
        assert!(t.plan(&msg("hi"), &c).filtered.is_empty());
    }

    #[test]
    fn a_budget_lowered_to_the_callers_cap_is_priced_and_limited_as_sent() {
        // A row thinking within a fixed 4,000-token budget ($1 per 1M thinking tokens, in
        // its fee), its window and max output less the budget, as the policy builds it.
        let mut thinks = row("thinks", 1.0, 1.0, 0.0);
        thinks.0.thinking = 4000;
        thinks.0.thinking_fixed = true;
        thinks.0.thinking_rate = 1.0 / 1e6;
        thinks.0.fee = 4000.0 / 1e6;
        thinks.0.max_output = 10_000 - 4000;
        thinks.0.context_window = 12_000 - 4000;
        let t = table(vec![thinks], vec![]);
        let plan = |limit: u32, cap: Option<u32>| {
            let c = Constraints {
                max_output_tokens: Some(limit),
                thinking_cap: cap,
                ..Default::default()
            };
            t.plan(&msg("hi"), &c)
        };
        let full = plan(100, None).candidates[0].est_cost;
        let lowered = plan(100, Some(1500)).candidates[0].est_cost;
        assert!(
            (full - lowered - 2500.0 / 1e6).abs() < 1e-12,
            "{full} {lowered}"
        );
        // a cap over the budget changes nothing
        assert_eq!(plan(100, Some(8000)).candidates[0].est_cost, full);
        // the answer gets the room the budget no longer takes: 8,000 tokens fit under
        // 1,500 of thinking, not under 4,000
        assert!(matches!(
            plan(8000, None).filtered[..],
            [(0, Filtered::OutputTooLong { max: 6000, .. })]
        ));
        assert!(plan(8000, Some(1500)).filtered.is_empty());
    }

    #[test]
    fn context_window_uses_exact_count_when_close() {
        let mut r = row("tiny", 1.0, 1.0, 0.0);
        r.0.context_window = 300;
        let t = table(vec![r], vec![]);
        let c = Constraints {
            max_output_tokens: Some(10),
            ..Default::default()
        };
        let text = "hello world ".repeat(140); // ~280 tokens: close to the window
        let p = t.plan(&msg(&text), &c);
        // near the window, the count is exact whichever way the check goes
        let exact = tokens::count(&text, Family::O200k)
            + tokens::PER_MESSAGE_OVERHEAD
            + tokens::PER_REQUEST_OVERHEAD;
        if exact + 10 <= 300 {
            assert!(p.candidates[0].tokens_in_exact);
            assert_eq!(p.candidates[0].tokens_in as usize, exact);
        } else {
            assert!(p.candidates.is_empty());
            assert!(
                matches!(p.filtered[0].1, Filtered::ContextWindow { need, .. } if need as usize == exact + 10)
            );
        }
    }

    #[test]
    fn count_prompt_counts_far_from_every_limit() {
        // punctuation: the estimate is several times under the count
        let text: String = "!@#$%^&*(){}[]<>?/|~`".chars().cycle().take(4000).collect();
        let t = table(vec![row("big", 1.0, 1.0, 0.0)], vec![]);
        let exact = tokens::count(&text, Family::O200k)
            + tokens::PER_MESSAGE_OVERHEAD
            + tokens::PER_REQUEST_OVERHEAD;
        let far = t.plan(&msg(&text), &Constraints::default());
        assert!(!far.candidates[0].tokens_in_exact);
        let c = Constraints {
            count_prompt: true,
            ..Default::default()
        };
        let p = t.plan(&msg(&text), &c);
        let cand = &p.candidates[0];
        assert!(cand.tokens_in_exact);
        assert_eq!(cand.tokens_in as usize, exact);
        assert_eq!(cand.tokens_in_max as usize, exact);
    }

    #[test]
    fn rules_come_first() {
        let rule = Rule {
            name: "code".into(),
            task: Some(Task::Code),
            flags_all: 0,
            min_tokens_in: 0.0,
            max_tokens_in: f32::INFINITY,
            models: vec![0],
        };
        let t = table(
            vec![row("big", 10.0, 30.0, 3.0), row("small", 0.1, 0.2, 3.0)],
            vec![rule],
        );
        let p = t.plan(&msg("write a python function"), &Constraints::default());
        assert_eq!(p.rule, Some(0));
        assert_eq!(t.rows[p.candidates[0].row].id, "big");
        assert!(p.candidates[0].by_rule);
    }

    #[test]
    fn pick_is_plans_primary() {
        let rule = Rule {
            name: "code".into(),
            task: Some(Task::Code),
            flags_all: 0,
            min_tokens_in: 0.0,
            max_tokens_in: f32::INFINITY,
            models: vec![3],
        };
        let mut rows = vec![
            row("big", 10.0, 30.0, 3.0),
            row("small", 0.1, 0.2, -1.0),
            row("mid", 1.0, 2.0, 1.0),
            row("free?", f64::NAN, f64::NAN, 2.0),
            row("twin", 1.0, 2.0, 1.0),
        ];
        rows[0].0.context_window = 50;
        let t = table(rows, vec![rule]);
        let prompts: Vec<Vec<Message>> =
            ["hi", "write a python function", &"long text ".repeat(40)]
                .iter()
                .map(|s| msg(s))
                .collect();
        let (p, cost, forced) = t.plan_matrix(&prompts, &Constraints::default());
        let m = t.rows.len();
        let rankings = [
            Ranking::Floor(0.0),
            Ranking::Floor(0.7),
            Ranking::Floor(0.99),
            Ranking::Lambda(0.0),
            Ranking::Lambda(1e-3),
            Ranking::Lambda(10.0),
            Ranking::Lambda(f64::INFINITY),
        ];
        for (i, msgs) in prompts.iter().enumerate() {
            for r in rankings {
                let c = match r {
                    Ranking::Floor(f) => Constraints {
                        quality_floor: f as f32,
                        ..Default::default()
                    },
                    Ranking::Lambda(l) => Constraints {
                        lambda: Some(l),
                        ..Default::default()
                    },
                };
                let plan = t.plan(msgs, &c);
                let f = (forced[i] >= 0).then_some(forced[i] as usize);
                let got = r.pick(&p[i * m..(i + 1) * m], &cost[i * m..(i + 1) * m], f);
                assert_eq!(
                    got,
                    plan.candidates.first().map(|c| c.row),
                    "prompt {i}, {r:?}"
                );
            }
        }
        assert_eq!(forced[1], 3);
        assert_eq!(p[2 * m], f64::NEG_INFINITY); // "big" cannot take the long prompt
    }

    #[test]
    fn with_model_changes_one_row() {
        let t = table(
            vec![row("a", 1.0, 1.0, -3.0), row("b", 2.0, 2.0, 3.0)],
            vec![],
        );
        let c = Constraints {
            quality_floor: 0.5,
            ..Default::default()
        };
        assert_eq!(t.rows[t.plan(&msg("hi"), &c).candidates[0].row].id, "b");
        let t2 = t.with_model(0, 3.0, vec![0.0]).unwrap();
        assert_eq!(t2.rows[t2.plan(&msg("hi"), &c).candidates[0].row].id, "a");
        assert_eq!(t.params.row(0)[0], -3.0); // the original is unchanged
        assert!(t.with_model(0, f32::NAN, vec![0.0]).is_err());
        assert!(t.with_model(5, 0.0, vec![0.0]).is_err());
    }

    #[test]
    fn all_below_floor_is_flagged() {
        let t = table(
            vec![row("a", 1.0, 1.0, -3.0), row("b", 2.0, 2.0, -2.0)],
            vec![],
        );
        let c = Constraints {
            quality_floor: 0.99,
            ..Default::default()
        };
        let p = t.plan(&msg("hi"), &c);
        assert!(p.below_floor);
        assert_eq!(t.rows[p.candidates[0].row].id, "b");
    }
}
