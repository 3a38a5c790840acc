"""Helpers the loaders share: paths, CSV reading, token counting, prices, ids."""

from __future__ import annotations

import contextlib
import csv
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from ..errors import DatasetError
from ._set import prompt_id

__all__ = [
    "PathArg",
    "Paths",
    "Prices",
    "TokenCounter",
    "cost_usd",
    "default_token_counter",
    "expand_paths",
    "parse_score",
    "read_csv",
    "unique_ids",
]

PathArg = str | os.PathLike[str]
Paths = PathArg | Sequence[PathArg]
TokenCounter = Callable[[str], int]
# USD per one million tokens, (input, output).
Prices = Mapping[str, tuple[float, float]]

# Benchmark prompts with few-shot context and recorded answers exceed csv's 128 KiB default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def expand_paths(paths: Paths, suffixes: tuple[str, ...]) -> list[Path]:
    """Files named directly, plus files ending in `suffixes` under named directories (sorted)."""
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
            if not found:
                raise DatasetError(f"{path}: no {'/'.join(suffixes)} files in this directory")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DatasetError(f"{path}: no such file or directory")
    if not out:
        raise DatasetError("no data files given: pass at least one file or directory")
    return out


@contextlib.contextmanager
def utf8(path: Path | str) -> Iterator[None]:
    """Reading `path` as UTF-8: bytes that are not UTF-8 are a DatasetError naming the file
    and where (a UnicodeDecodeError names neither)."""
    try:
        yield
    except UnicodeDecodeError as exc:
        # the error's offset is within the decoder's chunk: the file's, decoded whole
        try:
            Path(path).read_bytes().decode("utf-8")
            at = f"{exc.reason}"
        except UnicodeDecodeError as whole:
            at = f"byte {whole.start}: {whole.reason}"
        except OSError:
            at = f"{exc.reason}"
        raise DatasetError(f"{path}: not UTF-8 text ({at}); save it as UTF-8") from None


def read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, row)]) of a CSV file whose header has the `required` columns.

    Reads the whole file at once: outcome CSVs are tens of MB at most, and a loader that
    fails half-way must not leave a file handle open.
    """
    with utf8(path), path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if row]
        except csv.Error as exc:
            raise DatasetError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from exc
    if header is None:
        raise DatasetError(f"{path}: the file is empty; expected a CSV header")
    absent = [c for c in required if c not in header]
    if absent:
        raise DatasetError(
            f"{path}: missing column(s) {absent}; the header is {header[:8]}"
            f"{' ...' if len(header) > 8 else ''}. Is this the right --format?"
        )
    for line, row in rows:
        if len(row) != len(header):
            raise DatasetError(f"{path}:{line}: {len(row)} fields for {len(header)} columns")
    return header, rows


_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}
_MISSING = {"", "nan", "-nan", "+nan", "none", "null", "na"}  # (-nan: what C's printf writes)


def parse_score(text: str, where: str) -> float:
    """A score cell: True/False, a number in [0, 1], or empty/NaN for no outcome."""
    value = text.strip().lower()
    if value in _MISSING:
        return float("nan")
    if value in _TRUE:
        return 1.0
    if value in _FALSE:
        return 0.0
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: score {text[:40]!r} is not a number or True/False") from None
    if not 0.0 <= number <= 1.0:
        raise DatasetError(f"{where}: score {number:g} is outside [0, 1]")
    return number


def parse_cost(text: str, where: str) -> float:
    """A USD cell: a number >= 0, or empty/NaN for unknown."""
    value = text.strip().lower()
    if value in _MISSING:
        return float("nan")
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: cost {text[:40]!r} is not a number") from None
    if not number >= 0.0 or number == float("inf"):
        raise DatasetError(f"{where}: cost {number:g} must be a finite USD amount >= 0")
    return number


def default_token_counter(encoding: str = "o200k_base") -> TokenCounter:
    """Exact BPE counts from the Rust core, imported only when a loader needs them."""
    try:
        # Imported by name so that loading data never needs the extension unless it counts.
        core = importlib.import_module("satisfice._core")
    except ImportError as exc:
        raise DatasetError(
            "counting tokens needs the compiled satisfice._core module, which is not importable "
            f"({exc}); build the wheel (maturin develop) or pass count_tokens=<callable>"
        ) from exc

    def count(text: str) -> int:
        return int(core.count_tokens(text, encoding))

    return count


def cost_usd(prices: Prices, model: str, tokens_in: int, tokens_out: int) -> float:
    """USD for one query at per-1M-token prices; NaN when the model is unpriced (never 0)."""
    price = prices.get(model)
    if price is None:
        return float("nan")
    price_in, price_out = price
    return (tokens_in * price_in + tokens_out * price_out) / 1e6


def unique_ids(raw: Sequence[str | None], prompts: Sequence[str]) -> list[str]:
    """Ids from the source (or a prompt hash), suffixed `#2`, `#3`, ... where they repeat.

    Sources do repeat ids and prompts (RouterBench reuses a sample_id for two different
    prompts); a suffix keeps every id unique and still stable for the same file.
    """
    seen: dict[str, int] = {}
    out = []
    for given, prompt in zip(raw, prompts, strict=True):
        base = given if given else prompt_id(prompt)
        count = seen.get(base, 0) + 1
        seen[base] = count
        out.append(base if count == 1 else f"{base}#{count}")
    return out
