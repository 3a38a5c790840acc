"""Outcome loaders and OutcomeSet: hand-made files in every format, plus the real data."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from satisfice.errors import DatasetError
from satisfice.eval import datasets as ds
from satisfice.eval.datasets import OutcomeSet

from .data_support import needs_data


def words(text: str) -> int:
    """A token counter that tests can compute by hand."""
    return len(text.split())


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def small_set(n: int = 6) -> OutcomeSet:
    scores = np.array([[i % 2, 1.0] for i in range(n)], dtype=float)
    return OutcomeSet(
        prompts=[f"prompt {i}" for i in range(n)],
        models=["small", "large"],
        scores=scores,
        costs=np.tile([0.001, 0.01], (n, 1)),
        groups=["a" if i < n // 2 else "b" for i in range(n)],
        ids=[str(i) for i in range(n)],
    )


# --- RouterBench -----------------------------------------------------------------------

RB_MODELS = ["m-small", "org/m-large"]
RB_HEADER = [
    "",
    "sample_id",
    "prompt",
    "eval_name",
    *RB_MODELS,
    *(f"{m}|model_response" for m in RB_MODELS),
    *(f"{m}|total_cost" for m in RB_MODELS),
    "oracle_model_to_route_to",
]


def rb_row(idx: int, sid: str, prompt: str, group: str, scores: list[str]) -> list[str]:
    return [
        str(idx),
        sid,
        repr([prompt]),
        group,
        *scores,
        repr(["A"]),
        repr(["B"]),
        "0.0001",
        "0.002",
        "m-small",
    ]


def test_routerbench_parses_rows_costs_and_list_literals(tmp_path: Path) -> None:
    huge = "x" * 300_000  # beyond csv's default 128 KiB field limit
    path = write_csv(
        tmp_path / "arc_train.csv",
        RB_HEADER,
        [
            rb_row(0, "arc.1", "Which 'rock'?\nA) a", "arc", ["1.0", "0.0"]),
            rb_row(1, "arc.2", huge, "arc", ["0.5", "1.0"]),
            rb_row(2, "arc.2", "same id, other prompt", "arc", ["0.0", "1.0"]),
            rb_row(3, "mbpp.1", "no outcome", "mbpp", ["", "1.0"]),
            rb_row(4, "mbpp.2", "nan outcome", "mbpp", ["1.0", "nan"]),
        ],
    )
    full = ds.load_routerbench(path, keep_missing=True)
    assert len(full) == 5
    assert full.models == RB_MODELS
    assert full.prompts[0] == "Which 'rock'?\nA) a"
    assert full.prompts[1] == huge
    assert full.groups == ["arc", "arc", "arc", "mbpp", "mbpp"]
    assert full.ids == ["arc.1", "arc.2", "arc.2#2", "mbpp.1", "mbpp.2"]
    np.testing.assert_array_equal(full.scores[1], [0.5, 1.0])
    assert math.isnan(full.scores[3, 0]) and math.isnan(full.scores[4, 1])
    np.testing.assert_allclose(full.costs[0], [0.0001, 0.002])
    assert full.responses is not None and full.responses[0] == ["A", "B"]
    assert full.missing_mask().tolist() == [False, False, False, True, True]


def test_routerbench_drops_missing_rows_by_default_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        RB_HEADER,
        [
            rb_row(0, "s1", "p1", "g", ["1", "1"]),
            rb_row(1, "s2", "p2", "g", ["", "1"]),
        ],
    )
    with caplog.at_level(logging.WARNING, logger="satisfice.eval"):
        loaded = ds.load_routerbench(path, with_responses=False)
    assert len(loaded) == 1 and loaded.responses is None
    assert "dropped 1 of 2 rows" in caplog.text


def test_routerbench_two_part_prompt_is_joined(tmp_path: Path) -> None:
    row = rb_row(0, "s1", "ignored", "g", ["1", "1"])
    row[2] = repr(["first part", "second part"])
    loaded = ds.load_routerbench(write_csv(tmp_path / "a.csv", RB_HEADER, [row]))
    assert loaded.prompts == ["first part\n\nsecond part"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            ["sample_id", "question", "eval_name", "m", "m|total_cost"],
            "missing column(s) ['prompt']",
        ),
        (["sample_id", "prompt", "eval_name", "m", "m|model_response"], "no '<model>|total_cost'"),
        (["sample_id", "prompt", "eval_name", "m|total_cost"], "no score column"),
    ],
)
def test_routerbench_bad_header_is_a_clear_error(
    tmp_path: Path, header: list[str], message: str
) -> None:
    path = write_csv(tmp_path / "bad.csv", header, [["x"] * len(header)])
    with pytest.raises(DatasetError, match=re.escape(message)):
        ds.load_routerbench(path)


def test_routerbench_bad_cell_names_file_and_line(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        RB_HEADER,
        [rb_row(0, "s1", "p", "g", ["1", "1"]), rb_row(1, "s2", "p", "g", ["yes-ish", "1"])],
    )
    with pytest.raises(DatasetError, match=r"a\.csv:3, column 'm-small': score 'yes-ish'"):
        ds.load_routerbench(path)


def test_routerbench_files_with_different_models_refuse_to_merge(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", RB_HEADER, [rb_row(0, "s1", "p", "g", ["1", "1"])])
    other = ["sample_id", "prompt", "eval_name", "z", "z|total_cost"]
    write_csv(tmp_path / "b.csv", other, [["s", "p", "g", "1", "0.1"]])
    with pytest.raises(DatasetError, match="disagree on the models"):
        ds.load_routerbench(tmp_path)


# --- RouteLLM --------------------------------------------------------------------------

WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def write_routellm(root: Path) -> None:
    mmlu = root / "mmlu"
    mmlu.mkdir()
    write_csv(
        mmlu / "mmlu_anatomy.csv",
        ["prompt", WEAK, STRONG],
        [["one two three", "True", "True"], ["leaked prompt here", "False", "True"]],
    )
    write_csv(
        mmlu / "mmlu_virology.csv",
        ["prompt", WEAK, STRONG],
        [["four five", "False", "False"]],
    )
    (mmlu / "contaminated_prompts.jsonl").write_text(
        json.dumps({"train_prompt": "t", "eval_prompt": "leaked prompt here"}) + "\n"
    )
    gsm = root / "gsm8k"
    gsm.mkdir()
    write_csv(
        gsm / "gsm8k_responses.csv",
        ["prompt", WEAK, STRONG, f"{WEAK}_response", f"{STRONG}_response"],
        [["how many eggs", "True", "False", "sixteen eggs", "it is 18 eggs total"]],
    )


def test_routellm_costs_groups_and_contamination(tmp_path: Path) -> None:
    write_routellm(tmp_path)
    loaded = ds.load_routellm(tmp_path, count_tokens=words)
    assert loaded.models == [WEAK, STRONG]
    assert loaded.groups == ["gsm8k", "anatomy", "virology"]  # sorted file order
    assert "leaked prompt here" not in loaded.prompts
    np.testing.assert_array_equal(loaded.scores, [[1, 0], [1, 1], [0, 0]])
    # GSM8K: 3 prompt tokens; responses of 2 and 5 tokens.
    assert loaded.costs[0, 0] == pytest.approx((3 * 0.60 + 2 * 0.60) / 1e6)
    assert loaded.costs[0, 1] == pytest.approx((3 * 10.0 + 5 * 30.0) / 1e6)
    # MMLU: no response, so the 1-token answer RouteLLM generated.
    assert loaded.costs[1, 1] == pytest.approx((3 * 10.0 + 1 * 30.0) / 1e6)
    assert loaded.responses is not None
    assert loaded.responses[0] == ["sixteen eggs", "it is 18 eggs total"]
    assert loaded.responses[1] == [None, None]
    assert loaded.ids[1].startswith("anatomy:") and len(set(loaded.ids)) == 3

    kept = ds.load_routellm(tmp_path / "mmlu", count_tokens=words, drop_contaminated=False)
    assert len(kept) == 3 and "leaked prompt here" in kept.prompts


def test_routellm_unpriced_model_costs_nan_not_zero(tmp_path: Path) -> None:
    write_routellm(tmp_path)
    loaded = ds.load_routellm(tmp_path / "mmlu", count_tokens=words, prices={STRONG: (1, 1)})
    assert np.isnan(loaded.costs[:, 0]).all()
    assert (loaded.costs[:, 1] > 0).all()


def test_routellm_without_rust_core_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_routellm(tmp_path)
    monkeypatch.setitem(sys.modules, "satisfice._core", None)  # makes the import fail
    with pytest.raises(DatasetError, match="count_tokens=<callable>"):
        ds.load_routellm(tmp_path)


# --- LLMRouter -------------------------------------------------------------------------


def write_llmrouter(root: Path, records: list[dict[str, object]]) -> Path:
    data = root / "dcrouter_train.json"
    data.write_text(json.dumps(records))
    prices = {
        "cheap": {"size": "7B", "input_price": 0.2, "output_price": 0.4, "model": "x/cheap"},
        "big": {"size": "70B", "input_price": 0.9, "output_price": 0.9, "model": "x/big"},
    }
    (root / "llm_prices.json").write_text(json.dumps(prices))
    return data


def test_llmrouter_scores_groups_and_costs(tmp_path: Path) -> None:
    data = write_llmrouter(
        tmp_path,
        [
            {"question": "a b c d", "scores": {"cheap": 0.0, "big": 1.0}, "cluster_id": 2},
            {"question": "e f", "scores": {"big": 0.5, "cheap": 1.0}, "cluster_id": 0},
            {"question": "g", "scores": {"big": 1.0}, "cluster_id": 0},
        ],
    )
    loaded = ds.load_llmrouter(data, count_tokens=words, assumed_tokens_out=10)
    assert len(loaded) == 2  # the record without 'cheap' is dropped
    assert loaded.models == ["cheap", "big"]
    assert loaded.groups == ["cluster_2", "cluster_0"]
    np.testing.assert_array_equal(loaded.scores, [[0.0, 1.0], [1.0, 0.5]])
    assert loaded.costs[0, 0] == pytest.approx((4 * 0.2 + 10 * 0.4) / 1e6)
    assert loaded.costs[1, 1] == pytest.approx((2 * 0.9 + 10 * 0.9) / 1e6)
    # The dispatcher finds the price file among the paths or beside the data.
    same = ds.load("llmrouter", [tmp_path], count_tokens=words, assumed_tokens_out=10)
    np.testing.assert_array_equal(same.costs, loaded.costs)


def test_llmrouter_missing_price_file_is_a_clear_error(tmp_path: Path) -> None:
    data = write_llmrouter(tmp_path, [{"question": "q", "scores": {"big": 1.0}}])
    (tmp_path / "llm_prices.json").unlink()
    with pytest.raises(DatasetError, match="prices_path"):
        ds.load_llmrouter(data, count_tokens=words)


def test_llmrouter_bad_record_names_its_index(tmp_path: Path) -> None:
    data = write_llmrouter(tmp_path, [{"question": "q", "scores": {"big": 2.0}}])
    with pytest.raises(DatasetError, match=r"\[0\]\.scores\['big'\]: score 2 is outside"):
        ds.load_llmrouter(data, count_tokens=words)


# --- outcomes JSONL --------------------------------------------------------------------


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    return path


def test_outcomes_format(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "log.jsonl",
        [
            {
                "prompt": "hello",
                "outcomes": {
                    "a": {"score": 1, "cost_usd": 0.5, "response": "hi", "latency_ms": 12.5},
                    "b": {"score": 0.25, "tokens_in": 1000, "tokens_out": 500},
                },
                "group": "chat",
                "id": "r1",
            },
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "sum 2+2"}]},
                ],
                "outcomes": {"a": {"score": False, "cost_usd": None}, "b": {"score": True}},
            },
            {"prompt": "only a", "outcomes": {"a": {"score": 0.5, "cost_usd": 0.1}}},
        ],
    )
    loaded = ds.load_outcomes(path, prices={"b": (2.0, 4.0)}, keep_missing=True)
    assert loaded.models == ["a", "b"]
    assert loaded.prompts[1] == "be brief\n\nsum 2+2"
    assert loaded.groups == ["chat", "default", "default"]
    assert loaded.ids[0] == "r1" and len(loaded.ids[1]) == 16
    np.testing.assert_array_equal(loaded.scores[:2], [[1.0, 0.25], [0.0, 1.0]])
    assert math.isnan(loaded.scores[2, 1])
    assert loaded.costs[0, 0] == 0.5
    assert loaded.costs[0, 1] == pytest.approx((1000 * 2.0 + 500 * 4.0) / 1e6)
    assert np.isnan(loaded.costs[1]).all()  # no cost and no tokens: unknown, never 0
    assert loaded.responses is not None and loaded.responses[0] == ["hi", None]
    assert loaded.latency_ms is not None and loaded.latency_ms[0, 0] == 12.5

    # by default a row some model has no score for, or an unknown cost (where the model's
    # others are known), is dropped: no metric can score it
    dropped = ds.load_outcomes(path, prices={"b": (2.0, 4.0)})
    assert len(dropped) == 1
    assert dropped.latency_ms is not None and dropped.latency_ms.shape == (1, 2)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"log\.jsonl:2: not valid JSON"),
        (json.dumps({"outcomes": {"a": {"score": 1}}}), "needs a 'prompt' string"),
        (json.dumps({"prompt": "p", "outcomes": {}}), "at least one model"),
        (json.dumps({"prompt": "p", "outcomes": {"a": {"score": 1.5}}}), "outside"),
        (json.dumps({"prompt": "p", "outcomes": {"a": {"score": "high"}}}), "not a finite"),
        (json.dumps({"prompt": "p", "outcomes": {"a": {"score": 1, "cost_usd": -1}}}), "neg"),
    ],
)
def test_outcomes_bad_lines_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "outcomes": {"a": {"score": 1}}}) + "\n" + line)
    with pytest.raises(DatasetError, match=message):
        ds.load_outcomes(path)


def test_outcomes_where_every_row_misses_a_model(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "log.jsonl",
        [
            {"prompt": "p1", "outcomes": {"a": {"score": 1}}},
            {"prompt": "p2", "outcomes": {"b": {"score": 0}}},
        ],
    )
    with pytest.raises(DatasetError, match="keep_missing=True"):
        ds.load_outcomes(path)
    assert len(ds.load_outcomes(path, keep_missing=True)) == 2


# --- OutcomeSet ------------------------------------------------------------------------


def test_split_by_hash_is_deterministic_and_order_free() -> None:
    n = 400
    base = OutcomeSet(
        prompts=[f"question number {i}" for i in range(n)],
        models=["m"],
        scores=np.zeros((n, 1)),
        costs=np.zeros((n, 1)),
        groups=["g"] * n,
        ids=[str(i) for i in range(n)],
    )
    train, test = base.split_by_hash(0.25, seed=7)
    assert len(train) + len(test) == n
    assert 0.15 < len(test) / n < 0.35
    assert set(train.prompts).isdisjoint(test.prompts)
    shuffled = base.subset(np.random.default_rng(0).permutation(n))
    _, test2 = shuffled.split_by_hash(0.25, seed=7)
    assert set(test2.prompts) == set(test.prompts)
    _, other = base.split_by_hash(0.25, seed=8)
    assert set(other.prompts) != set(test.prompts)


def test_split_by_hash_keeps_duplicate_prompts_together() -> None:
    s = OutcomeSet(
        prompts=["dup"] * 5 + [f"p{i}" for i in range(50)],
        models=["m"],
        scores=np.zeros((55, 1)),
        costs=np.zeros((55, 1)),
        groups=["g"] * 55,
        ids=[str(i) for i in range(55)],
    )
    train, test = s.split_by_hash(0.5, seed=1)
    assert (train.prompts.count("dup"), test.prompts.count("dup")) in ((0, 5), (5, 0))


def test_split_by_group_subset_and_select_models() -> None:
    s = small_set()
    train, test = s.split_by_group(["b"])
    assert set(test.groups) == {"b"} and set(train.groups) == {"a"}
    with pytest.raises(DatasetError, match=r"groups are \['a', 'b'\]"):
        s.split_by_group(["c"])
    picked = s.subset(np.array([True, False, True, False, False, False]))
    assert picked.ids == ["0", "2"]
    assert s.subset([5, 0]).ids == ["5", "0"]
    swapped = s.select_models(["large", "small"])
    np.testing.assert_array_equal(swapped.scores[:, 0], 1.0)
    with pytest.raises(DatasetError, match="not in this set"):
        s.select_models(["huge"])


def test_outcome_set_validates_and_is_read_only() -> None:
    s = small_set()
    with pytest.raises(ValueError, match="read-only"):
        s.scores[0, 0] = 0.5
    with pytest.raises(DatasetError, match=r"outside|must lie in \[0, 1\]"):
        OutcomeSet(["p"], ["m"], np.array([[2.0]]), np.array([[0.0]]), ["g"], ["i"])
    with pytest.raises(DatasetError, match="shape"):
        OutcomeSet(["p"], ["m", "n"], np.array([[1.0]]), np.array([[0.0]]), ["g"], ["i"])
    with pytest.raises(DatasetError, match="costs must be finite"):
        OutcomeSet(["p"], ["m"], np.array([[1.0]]), np.array([[-1.0]]), ["g"], ["i"])


def test_data_dir_and_dispatcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SATISFICE_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match=re.escape("SATISFICE_DATA_DIR=../shared/data")):
        ds.data_dir()
    monkeypatch.setenv("SATISFICE_DATA_DIR", str(tmp_path))
    assert ds.data_dir() == tmp_path
    monkeypatch.setenv("SATISFICE_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="not a directory"):
        ds.data_dir()
    with pytest.raises(DatasetError, match="choose one of routerbench, routellm"):
        ds.load("parquet", [tmp_path])
    with pytest.raises(DatasetError, match="no such file"):
        ds.load("routerbench", [tmp_path / "missing.csv"])


# --- the real data (only when SATISFICE_DATA_DIR points at it) --------------------------


@needs_data
def test_real_data_shapes() -> None:
    from satisfice.eval import metrics

    root = ds.data_dir()
    rb = ds.load_routerbench(root / "routerbench", keep_missing=True, with_responses=False)
    assert rb.scores.shape == (2225, 11)
    assert set(rb.groups) == {"arc-challenge", "mbpp", "winogrande"}
    complete = rb.drop_missing()
    assert len(complete) == 2205
    singles = metrics.single_models(complete.models, complete.scores, complete.costs)
    hull_aiq = metrics.aiq([p.cost for p in singles], [p.quality for p in singles])
    assert 0.79 < hull_aiq < 0.82  # the issue quotes about 0.81 for the single-model hull

    # Shapes only, so a whitespace token count stands in for the Rust core here.
    mmlu = ds.load_routellm(root / "routellm" / "mmlu", count_tokens=words)
    assert mmlu.scores.shape == (9508, 2)  # 9,512 rows minus 4 contaminated
    assert len(set(mmlu.groups)) == 38
    gsm = ds.load_routellm(root / "routellm" / "gsm8k", count_tokens=words)
    assert gsm.scores.shape == (823, 2) and gsm.responses is not None

    llm = ds.load("llmrouter", [root / "llmrouter"], count_tokens=words)
    assert llm.scores.shape == (5608, 9)
    assert not np.isnan(llm.costs).any()


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """A Latin-1 file had been a bare UnicodeDecodeError, naming neither file nor format."""
    rb = write_csv(tmp_path / "rb.csv", RB_HEADER, [rb_row(0, "s1", "p", "g", ["1", "1"])])
    rb.write_bytes(rb.read_bytes().replace(b"['p']", b"['caf\xe9']"))
    with pytest.raises(DatasetError, match=r"rb\.csv: not UTF-8 text \(byte \d+"):
        ds.load_routerbench(rb)
    # far into a file: the file's offset, not the decoder's chunk's
    rows = [rb_row(i, f"s{i}", "p" * 50, "g", ["1", "1"]) for i in range(2000)]
    big = write_csv(tmp_path / "big.csv", RB_HEADER, rows)
    data = big.read_bytes()
    at = len(data) - 100
    big.write_bytes(data[:at] + b"\xe9" + data[at + 1 :])
    with pytest.raises(DatasetError, match=rf"big\.csv: not UTF-8 text \(byte {at}:"):
        ds.load_routerbench(big)
    jl = tmp_path / "o.jsonl"
    jl.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"o\.jsonl: not UTF-8 text"):
        ds.load_outcomes([jl])
    (tmp_path / "llm").mkdir()
    data = write_llmrouter(tmp_path / "llm", [{"question": "q", "scores": {"big": 1.0}}])
    data.write_bytes(data.read_bytes().replace(b'"q"', b'"caf\xe9"'))
    with pytest.raises(DatasetError, match=r"not UTF-8 text"):
        ds.load_llmrouter(data, count_tokens=words)


def test_a_routerbench_file_read_as_routellm_says_which_format_it_is(tmp_path: Path) -> None:
    """`--format routellm` on RouterBench's CSVs read sample_id as a model and said "score
    507 is outside [0, 1]". Found by review."""
    path = write_csv(tmp_path / "rb.csv", ["", "sample_id", "prompt", "eval_name", "m1"],
                     [["0", "507", "hi", "arc", "1.0"]])  # fmt: skip
    with pytest.raises(DatasetError, match=r"RouterBench's.*Try --format routerbench"):
        ds.load_routellm([path])


def test_a_bad_score_names_its_column_and_minus_nan_is_no_outcome(tmp_path: Path) -> None:
    """A score outside [0, 1] named its file and line alone (in an 11-model file, which
    model?), and "-nan" (what C's printf writes) was "outside [0, 1]", not missing."""
    bad = write_csv(tmp_path / "a.csv", RB_HEADER, [rb_row(0, "s1", "p", "g", ["1", "inf"])])
    with pytest.raises(DatasetError, match=rf"a\.csv:2, column {RB_MODELS[1]!r}: score inf"):
        ds.load_routerbench(bad)
    ok = write_csv(tmp_path / "b.csv", RB_HEADER, [rb_row(0, "s1", "p", "g", ["1", "-nan"])])
    assert math.isnan(ds.load_routerbench(ok, keep_missing=True).scores[0, 1])


def _outcome_line(outcomes: str) -> str:
    return '{"prompt": "What is 2 + 2?", "outcomes": {' + outcomes + "}}\n"


def test_an_outcome_line_naming_a_model_twice_or_negative_tokens_is_refused(
    tmp_path: Path,
) -> None:
    """A model given twice on one line kept the last entry without a word; negative
    tokens_in were priced as given and failed as "costs must be finite and >= 0 USD", with
    no file or line."""
    twice = tmp_path / "twice.jsonl"
    twice.write_text(_outcome_line('"a": {"score": 1}, "b": {"score": 1}, "a": {"score": 0}'))
    with pytest.raises(DatasetError, match=r"twice\.jsonl:1.*'a' is given twice"):
        ds.load_outcomes(twice)
    neg = tmp_path / "neg.jsonl"
    neg.write_text(_outcome_line('"a": {"score": 1, "tokens_in": -5, "tokens_out": 3}'))
    with pytest.raises(DatasetError, match=r"neg\.jsonl:1\.outcomes\['a'\]\.tokens_in: -5"):
        ds.load_outcomes(neg, prices={"a": (1.0, 1.0)})
