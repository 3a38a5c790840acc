"""`satisfice calibrate`: the chosen floor or lambda meets the target when really routed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from satisfice import ConfigError, NoRouteError, Policy, Router
from satisfice.cli import main
from satisfice.eval import calibrate as C

PROMPTS = [
    "Hi there, how are you?",
    "What is the capital of Peru?",
    "Write a Python function that parses a CSV file and returns the rows as dicts.",
    "Prove that there are infinitely many prime numbers.",
    "Translate to German: the meeting moved to Thursday.",
    "Summarize this report in two sentences: " + "Revenue grew while costs fell. " * 60,
    "A train travels 210 km at 84 km/h. When does it arrive if it leaves at 3:40 pm?",
    "Write a short poem about the sea.",
]


def logs(path: Path, n: int = 48) -> Path:
    lines = [
        json.dumps(
            {"prompt": f"{PROMPTS[i % len(PROMPTS)]} (#{i})", "outcomes": {"m": {"score": 1}}}
        )
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def routed(tmp_path: Path) -> dict[str, float]:
    """Every logged prompt routed through a real Router with the policy calibrate wrote:
    what the chosen setting does in production."""
    router = Router(policy=Policy.load(tmp_path / "p.json"))
    top = router.registry.reference.id
    costs, ps, tops = [], [], 0
    for line in (tmp_path / "l.jsonl").read_text().split("\n"):
        if not line:
            continue
        try:
            d = router.route(json.loads(line)["prompt"])
        except NoRouteError:
            continue
        costs.append(d.est_cost_usd or 0.0)
        ps.append(d.primary.p_good)
        tops += d.model == top
    n = len(ps)
    return {"mean_cost_usd": sum(costs) / n, "mean_p_good": sum(ps) / n, "top_share": tops / n}


def calibrate(tmp_path: Path, target: str, **kw: object) -> dict[str, object]:
    prompts = [
        json.loads(line)["prompt"]
        for line in logs(tmp_path / "l.jsonl").read_text().split("\n")
        if line
    ]
    return C.calibrate_files(prompts, C.parse_target(target), policy_path=tmp_path / "p.json", **kw)  # type: ignore[arg-type]


def test_cost_target_is_met_when_routed(tmp_path: Path) -> None:
    lo = calibrate(tmp_path, "cost:1", write=False)["range"]["cost_usd"]  # type: ignore[index]
    budget = (lo[0] + lo[1]) / 4
    r = calibrate(tmp_path, f"cost:{budget}")
    assert r["met"] and r["knob"] == "floor"
    ver, pred = routed(tmp_path), r["predicted"]
    assert ver["mean_cost_usd"] <= budget
    # calibrate's batch ranking is the router's: the same choices as route(), prompt by prompt
    assert ver["mean_cost_usd"] == pytest.approx(pred["mean_cost_usd"], rel=1e-6)  # type: ignore[index]
    assert ver["mean_p_good"] == pytest.approx(pred["mean_p_good"], abs=1e-6)  # type: ignore[index]
    policy = Policy.load(tmp_path / "p.json")
    assert policy.quality_floor == pytest.approx(r["value"]) and policy.lam is None
    # A looser budget buys at least as much predicted quality.
    calibrate(tmp_path, f"cost:{budget * 3}")
    assert routed(tmp_path)["mean_p_good"] >= ver["mean_p_good"]


def test_quality_and_top_share_targets_and_lambda(tmp_path: Path) -> None:
    r = calibrate(tmp_path, "quality:90")
    best = r["best_single"]["mean_p_good"]  # type: ignore[index]
    at90 = routed(tmp_path)
    assert r["met"] and at90["mean_p_good"] >= 0.9 * best - 1e-9  # type: ignore[operator]
    calibrate(tmp_path, "quality:70")
    assert routed(tmp_path)["mean_cost_usd"] <= at90["mean_cost_usd"]
    r = calibrate(tmp_path, "top-share:0.05", knob="lambda")
    ver = routed(tmp_path)
    assert r["met"] and ver["top_share"] <= 0.05
    policy = Policy.load(tmp_path / "p.json")
    assert policy.lam == pytest.approx(r["value"])
    assert ver["mean_cost_usd"] == pytest.approx(r["predicted"]["mean_cost_usd"], rel=1e-6)  # type: ignore[index]


def test_cli_writes_the_policy_and_keeps_its_predictor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from satisfice.eval.evaluate import shipped_predictor

    pred = tmp_path / "pred.npz"
    shipped_predictor().save(pred)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"quality_floor": 0.5, "predictor": str(pred), "rules": [
        {"name": "poems", "use": ["gpt-5.4-mini"], "when": {"task": "creative"}}]}))  # fmt: skip
    data = logs(tmp_path / "l.jsonl")
    code = main(["calibrate", "--format", "outcomes", str(data), "--target", "quality:95",
                 "--policy", str(policy), "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["met"] and out["predictor"] == str(pred)
    saved = json.loads(policy.read_text())
    # Recorded relative to the policy file, so the pair can be moved together.
    assert (policy.parent / saved["predictor"]).resolve() == pred.resolve()
    assert saved["rules"][0]["name"] == "poems"
    assert saved["quality_floor"] == pytest.approx(out["value"])
    # An unreachable budget: exit 1, the closest setting is reported, the policy untouched
    # by --dry-run.
    code = main(["calibrate", "--format", "outcomes", str(data), "--target", "cost:1e-12",
                 "--policy", str(policy), "--dry-run"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 1 and "NOT met" in text and "dry run" in text
    assert json.loads(policy.read_text()) == saved


def test_a_relative_predictor_is_kept_from_the_policys_folder_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy names its predictor from its own folder (as `train --policy` writes it):
    calibrate read that path from where it ran and wrote it back resolved from there, a
    policy naming a file that did not exist; and a policy with a byte-order mark, which
    `route` reads, failed with a raw JSONDecodeError."""
    from satisfice.eval.evaluate import shipped_predictor

    conf = tmp_path / "conf"
    conf.mkdir()
    shipped_predictor().save(conf / "pred.npz")
    policy = conf / "policy.json"
    policy.write_bytes(b"\xef\xbb\xbf" + json.dumps({"predictor": "pred.npz"}).encode())
    data = logs(tmp_path / "l.jsonl")
    monkeypatch.chdir(tmp_path)  # not the policy's folder
    code = main(["calibrate", "--format", "outcomes", str(data), "--target", "quality:90",
                 "--policy", "conf/policy.json", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["written"]
    assert json.loads(policy.read_text())["predictor"] == "pred.npz"
    assert Policy.load(policy).quality is not None  # loads, its predictor found


@pytest.mark.parametrize(
    ("text", "match"),
    [("cost", "use cost:"), ("speed:3", "use cost:"), ("cost:abc", "not a number"),
     ("top-share:2", "share in"), ("quality:120", "up to 100"), ("cost:-1", "positive")],
)  # fmt: skip
def test_bad_targets(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        C.parse_target(text)
