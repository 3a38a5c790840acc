"""The command line's errors, as an adversarial review from a separate clone found them.
Every test here failed on the code it was written against: deeply nested JSON or TOML given
to route, serve, probe and eval came out as a RecursionError traceback; a malformed
PostgreSQL DSN as a traceback quoting its password; --save-onnx without onnx as a traceback
after the predictor was saved and the old .onnx truncated; a probe whose every call failed
rewrote the policy, and one given --save-policy but not --policy replaced that file with the
default policy; the eval loaders' errors named only Python arguments; a JSONL "ledger" none
of whose lines is JSON read as an empty ledger; progress was written only to a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SATISFICE_DATA_DIR", ROOT.parent / "shared" / "data"))


def _env() -> dict[str, str]:
    """The environment without any provider key: no probe or chat call can succeed."""
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k and "_KEY" not in k}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli(*args: str, cwd: Path | None = None, pre: str = "",
        timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`satisfice ARGS` in a child process; `pre` is Python run first (e.g. to hide a module)."""
    code = f"{pre}\nimport sys\nfrom satisfice.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd,
    )  # fmt: skip


# -- 1. deeply nested input: a RecursionError traceback ---------------------------------------


def _deep_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    deep = "[" * 50_000 + "]" * 50_000
    (tmp / "deep.json").write_text(deep)
    (tmp / "llm").mkdir()
    (tmp / "llm" / "dcrouter_train.json").write_text(deep)
    (tmp / "llm" / "llm_prices.json").write_bytes(
        (DATA / "llmrouter" / "llm_prices.json").read_bytes()
    )
    (tmp / "deep.toml").write_text("x = " + "[" * 5_000 + "]" * 5_000 + "\n")
    return [
        ("route --messages", ["route", "--messages", "--file", str(tmp / "deep.json")]),
        ("serve --config", ["serve", "--config", str(tmp / "deep.toml"), "--port", "0"]),
        ("probe --health", ["probe", "--models", "gpt-5.4-nano", "--health",
                            str(tmp / "deep.json")]),
        ("eval llmrouter", ["eval", "--format", "llmrouter", str(tmp / "llm"), "--quiet"]),
    ]  # fmt: skip


@pytest.mark.parametrize("i", range(4), ids=["route", "serve", "probe", "eval"])
def test_deeply_nested_input_is_a_clear_error_not_a_traceback(i: int, tmp_path: Path) -> None:
    """A file nested past Python's recursion limit is refused with one line by the registry,
    policy, outcomes and catalogue readers, but not by these four: `route --messages`
    (cli.cmd_route catches JSONDecodeError only), `serve --config` (ServerConfig.load lacks
    RecursionError), `probe --health` (state.Health.load) and the llmrouter loader."""
    name, argv = _deep_cases(tmp_path)[i]
    p = cli(*argv, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "error:" in p.stderr, (
        name,
        p.returncode,
        p.stderr[-400:],
    )


# -- 2. a malformed PostgreSQL DSN: a traceback with the password in it ------------------------


@pytest.mark.parametrize("argv", [
    ["report"],
    ["train", "--save-predictor", "p.npz", "--from-ledger"],
    ["calibrate", "--target", "cost:0.1", "--policy", "p.json", "--from-ledger"],
], ids=["report", "train", "calibrate"])  # fmt: skip
@pytest.mark.parametrize("dsn", [
    "postgresql://bob:SECRETPW123@[::1/db",          # an unclosed IPv6 bracket
    "postgresql://bob:SECRETPW123@127.0.0.1/db?bogus=1",  # an unknown query parameter
], ids=["bracket", "query"])  # fmt: skip
def test_a_malformed_postgres_ledger_dsn_is_an_error_without_its_password(
    argv: list[str], dsn: str, tmp_path: Path
) -> None:
    """ledger._read_pg catches psycopg.OperationalError only: a DSN psycopg cannot parse
    raises ProgrammingError, a raw traceback whose last line quotes the DSN, password and
    all (the writer, Ledger._connect, catches psycopg.Error and names the type alone)."""
    p = cli(*argv, dsn, cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr[-400:]
    assert "Traceback" not in p.stderr and "SECRETPW123" not in p.stderr, p.stderr[-400:]


# -- 3. --save-onnx without onnx: a traceback and an emptied file -----------------------------


def test_save_onnx_without_onnx_is_said_before_anything_is_written(tmp_path: Path) -> None:
    """eval_cli.cmd_eval saves --save-predictor, then onnx_export.export_onnx opens the
    --save-onnx path with open("wb") *before* onnx_bytes imports onnx: with onnx missing,
    the ImportError (not caught by cli._run) is a traceback, the existing .onnx is truncated
    to 0 bytes, and the predictor was written by a run that failed."""
    onnx, pred = tmp_path / "old.onnx", tmp_path / "p.npz"
    onnx.write_bytes(b"the previous export")
    p = cli("eval", "--format", "routerbench", str(DATA / "routerbench" / "mbpp_train.csv"),
            "--max-rows", "200", "--test-split", "hash:0.3", "--no-embedding", "--no-humility",
            "--quiet", "--save-onnx", str(onnx), "--save-predictor", str(pred),
            pre="import sys; sys.modules['onnx'] = None")  # fmt: skip
    assert "Traceback" not in p.stderr and p.returncode == 2, p.stderr[-400:]
    assert "onnx" in p.stderr
    assert onnx.read_bytes() == b"the previous export"  # not truncated
    assert not pred.exists()  # said before the work, as other unusable outputs are


# -- 4. a probe whose every call failed rewrites the policy ------------------------------------


def test_a_probe_that_failed_every_call_leaves_the_saved_policy_as_it_was(
    tmp_path: Path,
) -> None:
    """cli.cmd_probe calls router.save_policy before it looks at whether any probe call
    succeeded: with no API key (every call failed, exit 1) it still replaced --save-policy's
    file (a calibrated quality_floor 0.5 became the default 0.8) and wrote POLICY.npz."""
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"quality_floor": 0.5}) + "\n")
    before = pol.read_text()
    p = cli("probe", "--models", "gpt-5.4-nano", "--policy", str(pol), "--save-policy",
            str(pol), timeout=120)  # fmt: skip
    assert p.returncode == 1 and "every probe call failed" in p.stderr, p.stderr[-400:]
    assert pol.read_text() == before
    assert not (tmp_path / "policy.json.npz").exists()


def test_a_probe_does_not_replace_a_saved_policy_it_did_not_start_from(tmp_path: Path) -> None:
    """`probe --save-policy P` without `--policy P` started from the default policy and
    replaced P with it, updated: a calibrated floor, lambda and ladders gone without a word
    (the review's suspicion, confirmed here)."""
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"quality_floor": 0.5}) + "\n")
    before = pol.read_text()
    p = cli("probe", "--models", "gpt-5.4-nano", "--save-policy", str(pol), timeout=120)
    assert p.returncode == 2 and "--policy" in p.stderr, p.stderr[-400:]
    assert pol.read_text() == before


def test_progress_is_written_as_lines_where_stderr_is_no_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Progress went only to a terminal: to a log or a pipe (CI), a long training stage
    said nothing until it ended."""
    import io

    from satisfice.eval import progress as P

    monkeypatch.setattr(P, "_LOG_EVERY_S", 0.0)
    out = io.StringIO()
    line = P.ProgressLine(out)
    line.stage("training")
    line.update(5, 10, "loss 0.5")
    line.done()
    text = out.getvalue()
    assert "training ..." in text and "training: 5/10 (50%) loss 0.5" in text, text


# -- 5. errors that tell a command-line user to pass Python keyword arguments ------------------


def _python_only_cases(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "llm").mkdir()
    src = DATA / "llmrouter" / "dcrouter_train.json"
    (tmp / "llm" / "dcrouter_train.json").write_bytes(src.read_bytes())
    with open(tmp / "split.jsonl", "w") as f:  # two models never measured on one prompt
        for i in range(20):
            m = "gpt-5.4-nano" if i % 2 else "gpt-5.4"
            f.write(json.dumps({"prompt": f"q {i}", "outcomes": {m: {"score": 1.0,
                                "cost_usd": 0.001}}}) + "\n")  # fmt: skip
    return [
        (["eval", "--format", "llmrouter", str(tmp / "llm" / "dcrouter_train.json"),
          "--quiet"], "among the files"),
        (["eval", "--format", "outcomes", str(tmp / "split.jsonl"), "--quiet"],
         "the same prompts (on the command line"),
    ]  # fmt: skip


@pytest.mark.parametrize("i", range(2), ids=["llmrouter-prices", "outcomes-disjoint"])
def test_an_eval_error_says_what_to_do_on_the_command_line(i: int, tmp_path: Path) -> None:
    """The loaders' DatasetErrors reach the CLI verbatim, and said only "pass
    prices_path=<llm_prices.json>" (_llmrouter.load_llmrouter) and "load with
    keep_missing=True and use select_models(...)" (_set.OutcomeSet.drop_missing): Python
    arguments no `satisfice eval` option sets. They now say the command line's remedies too:
    list llm_prices.json among the files, give outcomes where the models answered the same
    prompts."""
    argv, for_the_cli = _python_only_cases(tmp_path)[i]
    p = cli(*argv, timeout=60)
    assert p.returncode == 2 and "error:" in p.stderr, p.stderr[-400:]
    assert for_the_cli in " ".join(p.stderr.split()), p.stderr[-400:]


# -- 6. a .jsonl "ledger" with no JSON in it reads as an empty ledger, exit 0 ------------------


def test_a_jsonl_ledger_none_of_whose_lines_is_json_is_an_error(tmp_path: Path) -> None:
    """ledger._read_jsonl skips every line that is not JSON as torn by a crash, refusing
    only binary bytes: a prose or CSV file named *.jsonl (no line of it JSON, so no crash
    tore it) reported "0 requests ... cost $0.000000" and exited 0."""
    led = tmp_path / "notes.jsonl"
    led.write_text("hello world\nthis is not a ledger\nat all\n")
    p = cli("report", str(led), "--json", timeout=60)
    assert p.returncode == 2 and "not" in p.stderr, (p.returncode, p.stdout[:200], p.stderr)


def test_a_policy_file_giving_a_key_twice_is_refused(tmp_path: Path) -> None:
    """A policy JSON with a key given twice was read with the last value, unsaid (the
    registry's JSON refuses it): a floor typed twice took whichever came last."""
    from satisfice import Policy
    from satisfice.errors import ConfigError

    pol = tmp_path / "policy.json"
    pol.write_text('{"quality_floor": 0.9, "quality_floor": 0.1}\n')
    with pytest.raises(ConfigError, match="twice"):
        Policy.load(pol)


def test_a_policy_file_with_an_integer_past_pythons_digits_is_a_config_error(
    tmp_path: Path,
) -> None:
    """A number of 5,000 digits in a policy JSON raised the standard library's raw
    ValueError (past the 4,300 digits it reads) through `satisfice route --policy`."""
    from satisfice import Policy
    from satisfice.errors import ConfigError

    pol = tmp_path / "policy.json"
    pol.write_text('{"quality_floor": 1' + "0" * 5000 + "}\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Policy.load(pol)


def test_a_long_report_says_how_far_it_has_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`satisfice report` over a large ledger said nothing until it had read it all (the
    record review's suspicion, confirmed): now a line every 2 s of reading."""
    from satisfice import cli

    monkeypatch.setattr(cli, "_REPORT_EVERY_S", 0.0)
    p = tmp_path / "l.jsonl"
    rec = {"started_at": 1700000000, "outcome": "ok", "task": "general", "model": "a",
           "total_cost_usd": 0.001}  # fmt: skip
    p.write_text("".join(json.dumps({**rec, "request_id": f"r{i}"}) + "\n" for i in range(2048)))
    assert cli.main(["report", str(p)]) == 0
    assert "2,048 requests read" in capsys.readouterr().err


def _one_record_ledger(tmp: Path) -> Path:
    led = tmp / "l.jsonl"
    led.write_text(json.dumps({"request_id": "r0", "started_at": 1.7e9, "model": "m",
                               "total_cost_usd": 0.01}) + "\n")  # fmt: skip
    return led


def test_an_output_path_that_is_a_loop_of_symlinks_is_an_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    """`Path.resolve()` raises RuntimeError on a symlink loop (Python 3.11), which the CLI
    let through as a traceback (exit 1) from every command that writes a file."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    p = cli("report", str(_one_record_ledger(tmp_path)), "--html", str(tmp_path / "a"))
    assert p.returncode == 2 and "loop of symbolic links" in p.stderr, p.stderr[-400:]
    assert "Traceback" not in p.stderr


def test_a_jsonl_ledger_that_is_a_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A JSONL ledger is read twice; a FIFO's second open waited for a writer for good."""
    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    p = cli("report", str(fifo), timeout=30)
    assert p.returncode == 2 and "not a regular file" in p.stderr, p.stderr[-400:]


def test_a_write_to_a_full_device_names_the_path(tmp_path: Path) -> None:
    """Writing into a device (/dev/full) said only "[Errno 28] No space left on device"."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    p = cli("report", str(_one_record_ledger(tmp_path)), "--html", "/dev/full")
    assert p.returncode == 2 and "/dev/full" in p.stderr, p.stderr[-400:]


def test_registry_update_writes_its_out_file_even_when_nothing_moved(tmp_path: Path) -> None:
    """With no price moved, `registry update --out NEW` said the file was "left as it was",
    wrote nothing and exited 0."""
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    out = tmp_path / "out.toml"
    p = cli("registry", "update", "--from", "litellm", str(empty), "--out", str(out))
    assert p.returncode == 0 and out.is_file(), (p.stdout[-400:], p.stderr[-400:])
    from satisfice import Registry

    assert len(Registry.load(out)) == len(Registry.default())
