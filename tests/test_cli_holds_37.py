"""The command line's edges, as an adversarial review from a separate clone found them.
Every test here failed on the code it was written against: `route --file -` and `count -`
with stdin closed came out as an AttributeError traceback; a prompt file, a policy, a server
config or a health file that is /dev/zero (or a file of gigabytes) was read until memory
ran out; an output path naming one of the command's inputs (`registry update --out` its
catalogue, `probe --save-predictor` or `--health` its registry) wrote over that input;
`probe --models M M` probed M twice, paying for each call twice; a file's option given
empty was taken as absent (`route --registry ''` routed on the bundled registry) or, for
`registry update --out ''`, a TypeError traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "tests" / "fixtures" / "sources"


def _env() -> dict[str, str]:
    """The environment without any provider key: no probe or chat call can succeed."""
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k and "_KEY" not in k}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _capped() -> None:
    # 3 GB of address space: an unbounded read of /dev/zero fails in a second, not after
    # filling the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def cli(*args: str, cwd: Path | None = None, stdin: int | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    code = "import sys\nfrom satisfice.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
        env=_env(), cwd=cwd, stdin=stdin, preexec_fn=_capped,
    )  # fmt: skip


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], r.stderr[-2000:]
    return lines[0]


# -- 1. stdin closed -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["route", "--file", "-"], ["count", "-"]])
def test_stdin_closed_is_said(args: list[str]) -> None:
    # `<&-` in a shell: Python's sys.stdin is None, and `.buffer` had raised AttributeError
    r = subprocess.run(
        [sys.executable, "-m", "satisfice.cli", *args], capture_output=True, text=True,
        timeout=60, env=_env(), preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert "stdin" in _one_line_error(r)


# -- 2. /dev/zero as an input file -----------------------------------------------------------


def _zero_cases(tmp: Path) -> list[list[str]]:
    (tmp / "policy.toml").write_text('[policy]\npath = "/dev/zero"\n')
    (tmp / "health.toml").write_text('[probe]\ninterval_s = 600\nhealth_file = "/dev/zero"\n')
    return [
        ["route", "--file", "/dev/zero"],
        ["count", "/dev/zero"],
        ["route", "--policy", "/dev/zero", "hello"],
        ["serve", "--config", "/dev/zero", "--port", "0"],
        ["serve", "--config", str(tmp / "policy.toml"), "--port", "0"],
        ["serve", "--config", str(tmp / "health.toml"), "--port", "0"],
        ["probe", "--models", "gpt-5.4-nano", "--health", "/dev/zero"],
    ]


@pytest.mark.parametrize("case", range(7))
def test_dev_zero_is_refused_not_read_until_memory_runs_out(tmp_path: Path, case: int) -> None:
    args = _zero_cases(tmp_path)[case]
    r = cli(*args, cwd=tmp_path, timeout=60)
    assert "MB" in _one_line_error(r)


# -- 3. an output that is one of the command's inputs -----------------------------------------


def test_registry_update_out_is_not_its_catalogue(tmp_path: Path) -> None:
    cat = tmp_path / "litellm.json"
    cat.write_bytes((SOURCES / "litellm_prices.json").read_bytes())
    before = cat.read_bytes()
    r = cli("registry", "update", "--from", "litellm", str(cat), "--out", str(cat), cwd=tmp_path)
    assert "--out" in _one_line_error(r)
    assert cat.read_bytes() == before


@pytest.mark.parametrize("flag", ["--save-predictor", "--health"])
def test_probe_does_not_write_over_its_registry(tmp_path: Path, flag: str) -> None:
    reg = tmp_path / "reg.json"
    from satisfice import Registry

    reg.write_text(Registry.default().to_json())
    before = reg.read_bytes()
    extra = ["--save-policy", str(tmp_path / "p.json")] if flag == "--save-predictor" else []
    r = cli("probe", "--registry", str(reg), "--models", "gpt-5.4-nano", flag, str(reg), *extra,
            cwd=tmp_path)  # fmt: skip
    assert flag in _one_line_error(r)
    assert reg.read_bytes() == before


# -- 4. a model named twice is probed once ----------------------------------------------------


def test_probe_models_named_twice_are_probed_once() -> None:
    import asyncio

    from satisfice import Router
    from satisfice.errors import SatisficeError
    from satisfice.probe import PROBES, run_probes

    asked: list[str] = []

    async def chat(*_: object, allow: tuple[str, ...] = (), **__: object) -> None:
        asked.append(allow[0])
        raise SatisficeError("no upstream here")  # counted as the probe's error

    router = Router()
    router.chat = chat  # type: ignore[method-assign]
    report = asyncio.run(run_probes(router, ["gpt-5.4-nano", "gpt-5.4-nano"], PROBES[:1]))
    assert asked == ["gpt-5.4-nano"]
    assert report.asked == {"gpt-5.4-nano": 1}


# -- 5. a file's option given empty ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["registry", "update", "--from", "litellm", str(SOURCES / "litellm_prices.json"),
          "--out", ""], "--out"),
        (["route", "--registry", "", "hello"], "--registry"),
        (["route", "--policy", "", "hello"], "--policy"),
        (["count", "--registry", "", "--model", "gpt-5.4-nano", "-"], "--registry"),
    ],
)  # fmt: skip
def test_an_empty_path_is_said_not_taken_as_absent(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    # `--registry "$REG"` with REG unset had routed on the bundled registry without a word;
    # `registry update --out ''` had been a TypeError traceback
    r = cli(*args, cwd=tmp_path)
    assert f"{flag} is empty" in _one_line_error(r)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["count", ""], "FILE is empty; give a file's path"),  # had said "leave --file out"
        (["report", ""], "LEDGER is empty"),  # had been "ledger . is a directory"
        (["eval", "--format", "routerbench", "x.csv", "--predictor", ""], "--predictor is empty"),
        (["calibrate", "--format", "routerbench", "x.csv", "--predictor", "", "--target",
          "cost:0.01", "--policy", "p.json"], "--predictor is empty"),
        (["calibrate", "--from-ledger", "", "--target", "cost:0.01", "--policy", "p.json"],
         "--from-ledger is empty"),
        (["train", "--from-ledger", "", "--save-predictor", "x.npz"], "--from-ledger is empty"),
        (["eval", "--format", "routerbench", ""], "FILES holds an empty path"),
        (["eval", "--format", "routerbench", "x.csv", "--train", ""], "--train holds an empty"),
    ],
)  # fmt: skip
def test_an_empty_path_argument_is_said_as_itself(
    tmp_path: Path, args: list[str], said: str
) -> None:
    # a positional named as the --file count has not; `--predictor ''` had scored the
    # shipped predictor without a word, and an empty FILES read the directory `.`
    (tmp_path / "x.csv").write_text("")
    r = cli(*args, cwd=tmp_path)
    assert said in _one_line_error(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


@pytest.mark.parametrize(
    "args",
    [
        ["report", "L", "--html", "L"],
        ["train", "--from-ledger", "L", "--save-predictor", "L"],
        ["eval", "--format", "outcomes", "L", "--plot", "L"],
    ],
    ids=["report", "train", "eval"],
)
def test_an_output_naming_the_ledger_or_data_it_reads_is_refused(
    tmp_path: Path, args: list[str]
) -> None:
    """Defect: `report L --html L` replaced the ledger with its HTML page (exit 0); train's
    --save-predictor and eval's --plot wrote over their inputs the same way."""
    led = tmp_path / "led.jsonl"
    led.write_text('{"request_id": "r1"}\n')
    before = led.read_bytes()
    r = cli(*[str(led) if a == "L" else a for a in args], cwd=tmp_path)
    assert r.returncode == 2 and "which the command reads" in _one_line_error(r), r.stderr
    assert led.read_bytes() == before
