"""Learned routing, evaluation and training, as reviewed: each test names a defect
found on the current code and the behaviour expected instead."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satisfice import Policy, Router
from satisfice.cli import main
from satisfice.errors import ConfigError, DatasetError
from satisfice.eval import train as T
from satisfice.eval._llmrouter import load_llmrouter, read_llmrouter_prices
from satisfice.eval._set import OutcomeSet
from satisfice.eval.evaluate import exclude_trained_rows
from satisfice.flywheel import ledger_outcomes
from satisfice.ledger import Ledger, read_records
from satisfice.predict import QualityModel
from satisfice.testing import LocalUpstream

from .chat_support import registry, router

WORDS = ["alpha", "beta", "gamma", "delta", "code", "python", "math", "prove", "integral", "sum",
         "list", "sort", "function"]  # fmt: skip
# Two models of the bundled registry, so that a Router can route to and learn about them.
NANO, MINI = "gpt-5.4-nano", "gpt-5.4-mini"


def _prompts(n: int, tag: str) -> list[str]:
    rng = np.random.default_rng(len(tag) + n)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) + f" {tag}{i}"
            for i in range(n)]  # fmt: skip


def _outcomes(prompts: list[str], models: tuple[str, ...] = (NANO, MINI)) -> OutcomeSet:
    rng = np.random.default_rng(1)
    n, m = len(prompts), len(models)
    scores = (rng.random((n, m)) < np.linspace(0.5, 0.8, m)).astype(float)
    costs = np.tile(np.geomspace(0.001, 0.01, m), (n, 1))
    return OutcomeSet(prompts, list(models), scores, costs, ["g"] * n, [str(i) for i in range(n)])


def _trained(tmp_path: Path) -> Path:
    qm = T.fit(_outcomes(_prompts(200, "train")), T.TrainConfig(steps=20))
    path = tmp_path / "good.npz"
    qm.save(path)
    return path


def _edited(src: Path, dst: Path, edit: Any = None, weights: Any = None) -> Path:
    """`src` saved again with its metadata (JSON) or weights changed, as a hand edit would."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    if edit is not None:
        edit(meta)
    if weights is not None:
        arrays["weights"] = weights(arrays["weights"].copy())
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return dst


# -- the flywheel's training rows --------------------------------------------------------------


async def test_ledger_training_rows_credit_the_model_feedback_scored(tmp_path: Path) -> None:
    """Defect: `router.feedback(rid, score, model=M)` updates model M online, but the ledger
    stores only (request_id, score), and `satisfice train` (flywheel.ledger_outcomes) credits
    the latest score to the record's answering model. Scoring the primary's answer 1.0 and
    another model 0.0 on one request (which `FeedbackLog.claim` accepts: "a fallback's answer
    scored beside the primary's") makes the refit learn that the primary FAILED that prompt,
    the opposite of what the router learnt online.

    Expected: the training rows carry each score for the model it was given for (alpha 1.0,
    beta 0.0 if kept), never beta's score as alpha's outcome."""
    with LocalUpstream() as up:
        async with router(up.url).attach(ledger=tmp_path / "a.db", record_prompts=True) as r:
            res = await r.chat("Say hello")
            assert res.model == "alpha"
            r.feedback(res.request_id, 1.0)  # alpha's answer was good
            r.feedback(res.request_id, 0.0, model="beta")  # beta's was not
            assert r.ledger is not None and r.ledger.flush()
    train, _ = ledger_outcomes(list(read_records(tmp_path / "a.db")), holdout=0.0)
    got = {m: float(train.scores[0, j]) for j, m in enumerate(train.models)
           if not math.isnan(train.scores[0, j])}  # fmt: skip
    assert got.get("alpha") == 1.0, f"alpha's training label should be 1.0, got {got}"


# -- hand-edited or corrupt predictors ---------------------------------------------------------


def test_predictor_with_nan_weights_is_refused_when_loaded(tmp_path: Path) -> None:
    """Defect: `QualityModel.load` accepts a predictor whose W holds NaN (predict.py's
    `_F32_MAX` comment says "anything larger (or NaN) is refused", but only the embedding
    weights are checked). `satisfice eval --predictor nan.npz` then fails with "scores has
    NaN in 59 row(s) ... drop those rows (OutcomeSet.drop_missing())", blaming the user's
    outcome data, not the predictor; the Router refuses it only when compiled, with
    "predictor weights contain NaN or infinity" and no file name.

    Expected: load raises ConfigError naming the file."""
    bad = _edited(_trained(tmp_path), tmp_path / "nan.npz",
                  weights=lambda w: (w.__setitem__((0, 0), np.nan), w)[1])  # fmt: skip
    with pytest.raises(ConfigError, match="nan.npz"):
        QualityModel.load(bad)


@pytest.mark.parametrize(
    "ability",
    [["x", "x", "x", "x"], ["0.1"] * 4, "1234", {"a": 1, "b": 2, "c": 3, "d": 4}],
    ids=["strings", "numeric-strings", "digit-string", "object"],
)
def test_predictor_whose_abilities_are_not_numbers_is_refused_naming_the_file(
    tmp_path: Path, ability: Any
) -> None:
    """An ability list of strings raised numpy's raw ValueError from the file's check (a
    traceback out of `satisfice route --policy`); strings of digits loaded and failed at
    routing with a TypeError; a string "1234" or an object was iterated into abilities."""
    bad = _edited(_trained(tmp_path), tmp_path / "abil.npz",
                  edit=lambda m: m["models"][NANO].__setitem__("ability", ability))  # fmt: skip
    with pytest.raises(ConfigError, match="abil.npz.*malformed"):
        QualityModel.load(bad)


def _set_fisher_weight(v: Any) -> Any:
    return lambda m: m["meta"]["fisher"].__setitem__("mean_weight", v)


def _set_n_obs(v: Any) -> Any:
    return lambda m: m["models"][NANO].__setitem__("n_obs", v)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_set_fisher_weight(float("nan")), id="fisher-mean_weight-nan"),
        pytest.param(_set_fisher_weight(-5.0), id="fisher-mean_weight-negative"),
        pytest.param(_set_fisher_weight("abc"), id="fisher-mean_weight-string"),
        pytest.param(_set_n_obs(float("nan")), id="n_obs-nan"),
        pytest.param(_set_n_obs(-1e6), id="n_obs-negative"),
    ],
)
def test_predictor_with_bad_feedback_evidence_is_refused_or_learns_sensibly(
    tmp_path: Path, edit: Any
) -> None:
    """Defect: a predictor file whose feedback evidence is damaged (meta.fisher.mean_weight
    NaN, negative or a string; a model's n_obs NaN or negative) loads and routes silently.
    The damage shows only at the first `router.feedback()`: NaN -> ConfigError "its bias
    and ability values must be finite" (the bias in the file IS finite) on every call, and
    the request id is burned (claimed before the update failed); a string -> a raw
    ValueError out of feedback(); a negative mean_weight -> a positive score LOWERS the
    model's bias (0.533 -> 0.529 -> 0.524 for three scores of 1.0); a negative n_obs ->
    the bias never moves and n_obs counts up from -1e6.

    Expected: load refuses the file (ConfigError), or feedback with score 1.0 succeeds and
    does not lower the model's bias."""
    bad = _edited(_trained(tmp_path), tmp_path / "bad.npz", edit=edit)
    try:
        qm = QualityModel.load(bad)
    except ConfigError:
        return  # refused at load: fine
    r = Router(policy=Policy(quality=qm))
    before = qm.models[NANO].bias
    d = r.route([{"role": "user", "content": "sort a list in python"}])
    after = r.feedback(d.request_id, 1.0, model=NANO)
    assert math.isfinite(after.bias) and after.bias > before, (before, after.bias)


# -- malformed price files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "price", [-0.1, "1e400", "nan", 10**400], ids=["negative", "infinite", "nan", "long-integer"]
)
def test_llmrouter_price_that_is_not_a_finite_non_negative_number_is_refused(
    tmp_path: Path, price: Any
) -> None:
    """Defect: `read_llmrouter_prices` takes any float(): a negative input price is
    accepted and silently gives wrong (smaller, possibly negative) costs (`satisfice eval`
    exits 0 on such a file); "1e400" becomes inf and fails later as "costs must be finite
    and >= 0 USD" with no file or model named; "nan" makes the model unpriced and eval
    then says "model 'a' has no recorded cost to learn from; attach prices" although the
    file has an entry for it.

    Expected: DatasetError naming llm_prices.json and the model."""
    prices = tmp_path / "llm_prices.json"
    prices.write_text(json.dumps({
        "a": {"input_price": price, "output_price": 0.1},
        "b": {"input_price": 1.0, "output_price": 1.0},
    }))  # fmt: skip
    data = tmp_path / "dcrouter_train.json"
    data.write_text(json.dumps([
        {"question": q, "scores": {"a": i % 2, "b": 1.0}, "cluster_id": i % 3}
        for i, q in enumerate(_prompts(30, "q"))
    ]))  # fmt: skip
    with pytest.raises(DatasetError, match=r"llm_prices\.json.*'a'|'a'.*llm_prices\.json"):
        read_llmrouter_prices(prices)
    with pytest.raises(DatasetError, match=r"llm_prices\.json"):
        load_llmrouter(data, prices)


# -- in-sample scoring of a predictor refined by feedback ----------------------------------------


def test_eval_of_a_predictor_refined_by_feedback_on_the_test_prompts_is_not_silent(
    tmp_path: Path,
) -> None:
    """Defect: eval's promise "never scores a row the predictor was trained on" rests on the
    Bloom filter `fit` stores; feedback refines a predictor on prompts it never adds to it.
    Replay the test prompts' outcomes as feedback, save the policy, and
    `exclude_trained_rows` (what `satisfice eval --predictor` runs) drops none of them and
    adds no note: the rows are scored in-sample, silently.

    Expected: those rows dropped, or the evaluation told that the predictor was updated by
    feedback on prompts it cannot list (a note naming feedback)."""
    qm = QualityModel.load(_trained(tmp_path))
    r = Router(policy=Policy(quality=qm))
    test = _outcomes(_prompts(40, "test"))
    for i, p in enumerate(test.prompts):
        d = r.route([{"role": "user", "content": p}])
        r.feedback(d.request_id, float(test.scores[i, 0]), model=NANO)
    r.save_policy(tmp_path / "p.json", tmp_path / "refined.npz")
    refined = QualityModel.load(tmp_path / "refined.npz")
    assert refined.models[NANO].n_obs > qm.models[NANO].n_obs  # it did learn from them
    _, dropped = exclude_trained_rows(test, refined)
    said = any("feedback" in str(v) for v in refined.meta.values())
    assert dropped == len(test) or said, (
        f"{dropped} of {len(test)} feedback-trained rows dropped, and nothing says so"
    )


# -- CLI: progress on long work ----------------------------------------------------------------


def test_train_command_shows_progress_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect: `satisfice train` prints nothing until it is done: on a 60,000-record ledger
    it was silent for 1 min 47 s (reading, featurising, 400 Adam steps, the embedding
    logistic), where `satisfice eval` prints a line per stage on stderr (`ProgressLine`).

    Expected: at least one progress line on stderr for the training stage (as eval's
    "training: done in ..."); here on a small ledger."""
    db = tmp_path / "l.db"
    ledger = Ledger.open(db)
    for i, p in enumerate(_prompts(200, "led")):
        ledger.put({"request_id": f"r{i}", "started_at": i, "outcome": "ok",
                    "model": ("alpha", "beta")[i % 2], "feedback": float(i % 3 > 0),
                    "messages": [{"role": "user", "content": p}]})  # fmt: skip
    ledger.close()
    reg = tmp_path / "r.toml"
    reg.write_text(registry("http://127.0.0.1:9").to_toml())
    code = main(["train", "--from-ledger", str(db), "--save-predictor", str(tmp_path / "p.npz"),
                 "--registry", str(reg)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "train" in err.lower(), f"no progress on stderr: {err!r}"


# -- a damaged training-prompt filter --------------------------------------------------------


def _set_bloom(key: str, v: Any) -> Any:
    def edit(m: dict[str, Any]) -> None:
        entry = m["meta"]["training_prompts"]
        if v is None:
            entry.pop(key)
        else:
            entry[key] = v

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_set_bloom("bloom", "!!notbase64"), id="bloom-not-base64"),
        pytest.param(_set_bloom("bloom", None), id="bloom-missing"),
        pytest.param(_set_bloom("bloom", ""), id="bloom-empty"),
        pytest.param(_set_bloom("hashes", 0), id="hashes-zero"),
    ],
)
def test_eval_with_a_damaged_training_prompt_filter_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any
) -> None:
    """Defect: `QualityModel.load` does not check meta["training_prompts"] (the Bloom
    filter eval uses to drop the predictor's own training rows); `satisfice eval
    --predictor P` on a file whose filter is damaged dies with a raw traceback:
    binascii.Error "Invalid base64-encoded string" (bloom not base64), KeyError 'bloom'
    (missing), ZeroDivisionError "integer modulo by zero" (empty); with "hashes": 0 every
    prompt tests as "seen" and eval says "all 40 rows were used to train predictor
    'trained'", which is false.

    Expected: exit 2 with an error naming the predictor file as damaged."""
    bad = _edited(_trained(tmp_path), tmp_path / "damaged.npz", edit=edit)
    test = _outcomes(_prompts(40, "x"))
    data = tmp_path / "t.jsonl"
    lines = []
    for i, p in enumerate(test.prompts):
        outcomes = {
            m: {"score": float(test.scores[i, j]), "cost_usd": float(test.costs[i, j])}
            for j, m in enumerate(test.models)
        }
        lines.append(json.dumps({"prompt": p, "outcomes": outcomes}))
    data.write_text("\n".join(lines) + "\n")
    code = main(["eval", "--format", "outcomes", str(data), "--predictor", str(bad), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "damaged.npz" in err, (code, err[-300:])


# -- `satisfice train --policy`: "before" is not the predictor it replaces ----------------------


def test_train_with_policy_reports_before_as_the_policys_own_predictor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect: `satisfice train --policy P` points P at the new predictor, and its
    "before -> after" line is meant to show what the switch changes; but "before" is always
    the bundled prior (`train_from_ledger` is called without `start`), not the predictor P
    used. A second `train` run over a policy that already has a trained predictor reports
    the gain over the prior (here a large one) while it may replace a better predictor.

    Expected: with --policy, "before" scores the policy's current predictor on the held-out
    records."""
    db = tmp_path / "l.db"
    ledger = Ledger.open(db)
    for i, p in enumerate(_prompts(300, "led")):
        code = "python" in p
        ledger.put({"request_id": f"r{i}", "started_at": i, "outcome": "ok",
                    "model": ("alpha", "beta")[i % 2],
                    "feedback": float(code == (i % 2 == 1)),
                    "messages": [{"role": "user", "content": p}]})  # fmt: skip
    ledger.close()
    reg = tmp_path / "r.toml"
    reg.write_text(registry("http://127.0.0.1:9").to_toml())
    pol = tmp_path / "p.json"
    base = ["train", "--from-ledger", str(db), "--registry", str(reg), "--policy", str(pol),
            "--json"]  # fmt: skip
    assert main([*base, "--save-predictor", str(tmp_path / "first.npz")]) == 0
    capsys.readouterr()
    in_use = Policy.load(pol).quality_model()
    assert main([*base, "--save-predictor", str(tmp_path / "second.npz")]) == 0
    report = json.loads(capsys.readouterr().out)
    from satisfice.flywheel import score_predictor
    from satisfice.registry import Registry

    _, held = ledger_outcomes(list(read_records(db)), holdout=0.2)
    expected = score_predictor(in_use, held, Registry.load(reg))
    assert report["before"]["log_loss"] == pytest.approx(expected["log_loss"], abs=1e-9), (
        f"before = {report['before']['log_loss']:.4f}, the policy's predictor scores "
        f"{expected['log_loss']:.4f} on the same held-out records"
    )


def test_llmrouter_numbers_past_a_float_or_pythons_digits_are_dataset_errors(
    tmp_path: Path,
) -> None:
    """A score of 1 and 400 zeros raised a raw OverflowError (int too large to convert to
    float), and a 5,000-digit price the standard library's ValueError (past the 4,300
    digits it reads), through `satisfice eval --format llmrouter`."""
    prices = tmp_path / "llm_prices.json"
    prices.write_text(json.dumps({m: {"input_price": 1.0, "output_price": 1.0} for m in "ab"}))
    rows = [{"question": q, "scores": {"a": i % 2, "b": 1.0}, "cluster_id": i % 3}
            for i, q in enumerate(_prompts(30, "q"))]  # fmt: skip
    data = tmp_path / "dcrouter_train.json"
    for score, said in ((10**400, "score 1000"), (5, "score 5 is outside")):
        rows[4]["scores"]["a"] = score
        data.write_text(json.dumps(rows))
        with pytest.raises(DatasetError, match=said):
            load_llmrouter(data, prices)
    prices.write_text('{"a": {"input_price": 1' + "0" * 5000 + ', "output_price": 1}}')
    with pytest.raises(DatasetError, match=r"llm_prices\.json.*not valid JSON"):
        read_llmrouter_prices(prices)
