"""Rust core of satisfice: token counting, feature extraction and the dispatch table."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, SupportsIndex, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

from satisfice._table import ModelRowSpec, RuleSpec

_Messages = str | Sequence[Mapping[str, Any]]

__all__ = [
    "CAPABILITIES",
    "DENSE",
    "EMBED_DIM",
    "FAMILIES",
    "FEATURE_VERSION",
    "FLAGS",
    "TASKS",
    "DispatchTable",
    "Featurizer",
    "Plan",
    "Spellings",
    "__version__",
    "count_message_tokens",
    "count_tokens",
    "count_tokens_batch",
    "count_tokens_till_limit",
    "embed",
    "embed_batch",
    "estimate_message_tokens",
    "estimate_tokens",
    "estimate_tokens_batch",
    "estimator_inputs",
    "has_digit_run",
    "is_exact_family",
    "rank",
    "tokenizers_ready",
    "update_belief",
    "wait_for_tokenizers",
]

__version__: Final[str]
FEATURE_VERSION: Final[int]
DENSE: Final[int]
EMBED_DIM: Final[int]
CAPABILITIES: Final[list[str]]
TASKS: Final[list[str]]
FLAGS: Final[list[str]]
FAMILIES: Final[list[str]]

def count_tokens(text: str, encoding: str = "o200k_base") -> int:
    """Exact token count (o200k_base, cl100k_base; other families are scaled from those)."""

def count_tokens_till_limit(
    text: str, limit: SupportsIndex, encoding: str = "o200k_base"
) -> int | None:
    """Exact count, or None as soon as it would exceed `limit`."""

def count_tokens_batch(texts: Sequence[str], encoding: str = "o200k_base") -> list[int]:
    """Exact counts of many texts in one call."""

def estimate_tokens(text: str, family: str = "o200k_base") -> float:
    """Fast one-pass estimate of the token count in a tokenizer family."""

def estimate_tokens_batch(texts: Sequence[str], family: str = "o200k_base") -> list[float]:
    """Estimates for many texts in one call."""

def estimator_inputs(text: str) -> list[float]:
    """The character-class counts the estimator multiplies by its coefficients."""

def count_message_tokens(messages: _Messages, encoding: str = "o200k_base") -> int:
    """Tokens of a chat request: its texts (contents, tool calls, names) exactly, with
    OpenAI's per-message overhead, and images at the typical figure (not exact)."""

def has_digit_run(text: bytes | bytearray | str, n: int) -> bool:
    """Whether `text` holds `n` ASCII digits in a row (n > 0)."""

def is_exact_family(family: str) -> bool:
    """True for o200k_base and cl100k_base; other families are approximations."""

@final
class Spellings:
    """The keys' spellings `_redact` must not let through: `folded` matched with ASCII
    letters in any case, `exact` as they are."""

    def __new__(cls, folded: Sequence[str], exact: Sequence[str]) -> Spellings: ...
    def found_in(self, text: bytes | bytearray | str) -> bool:
        """Whether a spelling occurs in `text` (bytes, bytearray or str), ASCII letters in any
        case."""
    def key_start(self, text: str) -> int:
        """How many characters at the end of `text` could be where a spelling begins."""

@final
class Featurizer:
    """Prompt → fixed-length float32 features (32 named dense + hashed n-grams)."""

    def __new__(cls, hash_buckets: int = ..., seed: int = ...) -> Featurizer: ...
    @property
    def dim(self) -> int: ...
    @property
    def hash_buckets(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @staticmethod
    def dense_names() -> list[str]:
        """Names of the 32 dense features, in order."""
    def featurize(self, messages: _Messages) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """One conversation → (vector, info: task, flags, chars, turns, est_tokens)."""
    def featurize_batch(self, prompts: Iterable[_Messages]) -> npt.NDArray[np.float32]:
        """Many prompts → (n, dim) array, in one call with the GIL released."""

def rank(
    p_good: npt.NDArray[np.float64],
    est_cost: npt.NDArray[np.float64],
    settings: Sequence[float],
    by: Literal["floor", "lambda"],
    forced: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int64]:
    """The router's ranking over a table of plans for every setting: (len(settings), n)
    picks, -1 where nothing passed. A non-finite P(good) means filtered; NaN cost unpriced."""

@final
class DispatchTable:
    """Compiled model rows, predictor and rules; built by `Policy.compile`."""

    def __new__(
        cls,
        rows: Sequence[ModelRowSpec],
        weights: Buffer,
        intercept: Sequence[float],
        k: int,
        rules: Sequence[RuleSpec],
        expected_out: Sequence[int],
        hash_buckets: int = ...,
        seed: int = ...,
    ) -> DispatchTable: ...
    def with_model(self, row: int, bias: float, ability: Sequence[float]) -> DispatchTable:
        """A copy with one model's bias and ability replaced (feedback); the rest reused."""
    def plan_batch(
        self,
        prompts: Iterable[_Messages],
        *,
        max_cost: float | None = None,
        latency_slo_ms: float | None = None,
        needs: Sequence[str] | None = None,
        max_output_tokens: int | None = None,
        exclude: Sequence[int] | None = None,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Plan many prompts (no floor, no λ) with the GIL released: P(good) (n, models),
        -inf where filtered; est. USD, NaN unpriced, +inf filtered; the rule's pick or -1."""
    @property
    def model_ids(self) -> list[str]: ...
    def plan(
        self,
        messages: _Messages,
        max_cost: float | None = None,
        latency_slo_ms: float | None = None,
        quality_floor: float = 0.0,
        needs: Sequence[str] | None = None,
        max_output_tokens: int | None = None,
        lam: float | None = None,
        exclude: Sequence[int] | None = None,
        live_p95_ms: Sequence[tuple[int, float]] | None = None,
        extra_text: str | None = None,
        count_prompt: bool = False,
        output_includes_thinking: bool = False,
        thinking_cap: int | None = None,
    ) -> Plan:
        """Featurise, estimate, filter and rank in one call; `live_p95_ms` (row, ms) pairs
        replace the registry's p95 under a latency SLO; `extra_text` (tool definitions, a
        response schema) is counted as prompt tokens, not featurised; `count_prompt`: the
        prompt counted for every candidate, not only near a limit;
        `output_includes_thinking`: `max_output_tokens` holds a row's thinking (its
        `thinking`) as well as its answer; `thinking_cap` (`max_reasoning_tokens`): a row's
        fixed thinking budget over it is sent as it, its limits and fee follow (the rows
        that may not be come excluded)."""

@final
class Plan:
    """The ranked candidates and the reasons for everything filtered out."""

    @property
    def candidates(self) -> list[tuple[int, float, float, int, bool, bool]]: ...
    def head(self, n: int) -> list[int]:
        """Row indices of the first `n` candidates."""
    def top(self, n: int) -> list[tuple[int, float, float, int, bool, bool]]:
        """The first `n` candidates, as `candidates` gives them."""
    def filtered_counts(self) -> list[tuple[str, int]]:
        """(constraint, how many models it filtered out)."""
    def __len__(self) -> int: ...
    @property
    def filtered(self) -> list[tuple[int, str, str]]: ...
    @property
    def uncounted_parts(self) -> int:
        """File and audio parts of the prompt, which its token counts leave out."""
    @property
    def latent(self) -> list[float]:
        """The predictor's `[e_0..e_{k-1}, difficulty]` for this prompt."""
    @property
    def embedding(self) -> bytes | None:
        """The prompt's int8 embedding as bytes, when some model reads it (else None)."""
    @property
    def rule(self) -> int | None: ...
    @property
    def below_floor(self) -> bool: ...
    @property
    def tokens_out(self) -> int: ...
    @property
    def task(self) -> str: ...
    @property
    def flags(self) -> list[str]: ...
    @property
    def chars(self) -> int: ...
    def est_tokens(self, family: str) -> float: ...
    def max_tokens_in(self, row: int) -> int | None: ...

def update_belief(
    mean: Sequence[float],
    cov: bytes,
    latent: Sequence[float],
    score: float,
    scale: float = 1.0,
    offset: float = 0.0,
) -> tuple[tuple[float, ...], bytes]: ...
def wait_for_tokenizers() -> None:
    """Block until a tokenizer build in progress has finished (runs before every fork)."""

def tokenizers_ready() -> bool:
    """Whether exact counts are ready now (both tokenizers built)."""

def embed(prompt: _Messages) -> npt.NDArray[np.int8]:
    """A prompt's static embedding: int8[64], a unit vector scaled by 127 (all zeros when
    no word is known). `prompt` is a str or a message list; the table loads on first use."""

def embed_batch(prompts: Iterable[_Messages]) -> npt.NDArray[np.int8]:
    """Many prompts → (n, 64) int8, one boundary crossing, GIL released."""

def estimate_message_tokens(messages: Any, encoding: str = "o200k_base") -> float:
    """Estimated prompt tokens of chat messages (text parts, images, overhead)."""
