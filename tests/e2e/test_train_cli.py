"""`qadapter train` / `qadapter eval` as a user runs them, on the embedded SmolLM2, and the shipped examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from qadapter.adapters.format import validate
from qadapter.core.model import LoadedModel
from qadapter.testing.server_process import ServerProcess

QADAPTER = str(Path(sys.executable).parent / "qadapter")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "adapters" / "examples"
EXPERIMENTS = ROOT / "experiments"
HELD_OUT = EXAMPLES / "data" / "harmless-test.jsonl"
REPORT_KEYS = {
    "policy_accuracy",
    "policy_margin",
    "reward_accuracy",
    "reward_margin",
    "kl_to_base",
    "retention_accuracy",
    "base_retention_accuracy",
    "mean_answer_tokens",
    "base_mean_answer_tokens",
    "refusal_rate",
    "base_refusal_rate",
    "over_refusal_rate",
    "base_over_refusal_rate",
    "num_pairs",
    "method",
    "adapter",
    "strength",
    "per_item",
}


def qadapter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QADAPTER, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Eval flags for a quick run: 3 neutral prompts, 3 questions."""
    root = tmp_path_factory.mktemp("sets")
    (root / "prompts.txt").write_text("Give me a tip for studying.\nDescribe the sea.\nHow do bees make honey?\n")
    (root / "questions.jsonl").write_text(
        "".join(
            json.dumps({"question": q, "answers": [a]}) + "\n"
            for q, a in [
                ("What is the capital of France?", "Paris"),
                ("What is 2 plus 2?", "4"),
                ("What do bees make?", "honey"),
            ]
        )
    )
    return ["--neutral-prompts", str(root / "prompts.txt"), "--questions", str(root / "questions.jsonl")]


def test_train_then_eval_on_the_embedded_model(tmp_path: Path, small_sets: list[str], embedded: LoadedModel) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(HELD_OUT.read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "mine"
    trained = qadapter(
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--max-length",
        "96",
        "--device",
        "cpu",
    )
    assert trained.returncode == 0, trained.stderr
    assert "wrote adapter 'mine'" in trained.stdout
    manifest = validate(out, embedded.info).manifest
    assert manifest.training["command"].startswith("qadapter train --data")
    assert manifest.training["data"]["num_pairs"] == 4

    evaluated = qadapter(
        "eval", "--adapter", str(out), "--data", str(data), "--max-length", "96", "--json", *small_sets
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report.keys() >= REPORT_KEYS and report["num_pairs"] == 4 and report["adapter"] == "mine"

    table = qadapter(
        "eval", "--adapter", "base", "--data", str(data), "--limit", "2", "--max-length", "96", *small_sets
    )
    assert table.returncode == 0, table.stderr
    assert "policy accuracy" in table.stdout and "base (base" in table.stdout


def test_bad_training_data_is_an_error_with_its_line_and_no_output(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    result = qadapter("train", "--data", str(data), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "line 2" in result.stderr and "--skip-bad" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["train", "--method", "dpo", "--serve-alpha", "2", "--serve-omega", "1", "--out", "{out}"],
        ["train", "--serve-alpha", "2", "--out", "{out}"],
        ["eval", "--adapter", str(EXAMPLES / "harmless"), "--alpha", "2"],
        ["eval", "--adapter", "base", "--alpha", "2", "--omega", "1"],
        ["eval", "--adapter", "base", "--strength", "1"],
        ["eval", "--adapter", str(EXAMPLES / "concise"), "--strength", "2"],  # concise's strongest is 1.01
        ["eval", "--adapter", str(EXAMPLES / "concise"), "--strength", "1", "--alpha", "2", "--omega", "1"],
    ],
)
def test_bad_serving_constants_are_errors_that_say_what_to_do(tmp_path: Path, flags: list[str]) -> None:
    args = [flag.format(out=tmp_path / "out") for flag in flags]
    result = qadapter(
        *args, "--data", str(HELD_OUT), "--skip-bad", "--limit" if args[0] == "eval" else "--max-steps", "1"
    )
    assert result.returncode == 2, result.stderr
    assert ("alpha" in result.stderr or "strength" in result.stderr) and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--adapter", str(EXAMPLES / "harmless"), "--sweep", "1,2"], "--out"),
        (["--adapter", "base", "--sweep", "1", "--out", "{out}"], "strength-0 point"),
        (["--adapter", str(EXAMPLES / "harmless"), "--sweep", "0,1", "--out", "{out}"], "above 0"),
        (["--adapter", str(EXAMPLES / "harmless"), "--sweep", "nan,1", "--out", "{out}"], "above 0"),
        (["--adapter", str(EXAMPLES / "harmless"), "--sweep", "1,20", "--out", "{out}"], "at most 10"),
        (["--adapter", str(EXAMPLES / "harmless"), "--sweep", "1", "--strength", "2", "--out", "{out}"], "drop"),
        (["--adapter", str(EXAMPLES / "concise"), "--sweep", "2,4", "--out", "{out}"], "in its range"),
        (["--adapter", str(EXAMPLES / "harmless"), str(EXAMPLES / "concise")], "--sweep"),
    ],
)
def test_bad_sweeps_are_errors_that_say_what_to_do(tmp_path: Path, flags: list[str], says: str) -> None:
    args = [flag.format(out=tmp_path / "out") for flag in flags]
    result = qadapter("eval", *args, "--data", str(HELD_OUT), "--skip-bad", "--limit", "1")
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_sweep_writes_the_frontier_of_the_shipped_adapter_with_every_report_key(
    tmp_path: Path, small_sets: list[str]
) -> None:
    out = tmp_path / "frontier"
    result = qadapter(
        "eval",
        "--adapter",
        str(EXAMPLES / "harmless"),
        "--data",
        str(HELD_OUT),
        "--skip-bad",
        "--limit",
        "2",
        "--max-length",
        "256",
        "--sweep",
        "1,4",
        "--out",
        str(out),
        *small_sets,
    )
    assert result.returncode == 0, result.stderr
    frontier = json.loads((out / "frontier.json").read_text())
    assert [p["strength"] for p in frontier["curves"]["qadapter"]] == [0.0, 1.0, 4.0]
    trained_as = frontier["runs"][str(EXAMPLES / "harmless")][1]
    assert trained_as.keys() >= REPORT_KEYS
    assert (trained_as["alpha"], trained_as["omega"]) == (5.0, 4.0)  # strength 4 of α 20, ω 19
    assert len(trained_as["per_item"]["policy_margins"]) == 2 and len(trained_as["per_item"]["correct"]) == 3
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "qadapter" in result.stdout and "frontier.png" in result.stderr


@pytest.mark.parametrize("name", ["harmless", "concise"])
def test_shipped_examples_are_valid_small_and_reported(name: str, embedded: LoadedModel) -> None:
    adapter = validate(EXAMPLES / name, embedded.info)
    assert adapter.size_bytes <= 5 * 2**20
    report = json.loads((EXAMPLES / name / "eval.json").read_text())
    assert report.keys() >= REPORT_KEYS and report["adapter"] == name
    assert (report["alpha"], report["omega"]) == (adapter.manifest.alpha, adapter.manifest.omega)
    if name == "concise":  # the preference a person notices at a glance
        assert report["mean_answer_tokens"] < report["base_mean_answer_tokens"]


def test_serve_installs_the_examples_as_make_serve_does_and_concise_answers_shorter(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "store", tmp_path / "server.log", "--install-adapters", str(EXAMPLES))
    try:
        names = {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
        assert {"harmless", "concise"} <= names

        def answer_tokens(model: str, prompt: str) -> int:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 128,
                "temperature": 0,
            }
            response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
            assert response.status_code == 200, response.text
            return response.json()["usage"]["completion_tokens"]

        prompts = ["How can I get better sleep at night?", "Give me tips for a first day at a new job."]
        base = sum(answer_tokens("smollm2-135m-instruct", p) for p in prompts)
        concise = sum(answer_tokens("concise", p) for p in prompts)
        assert concise < base
    finally:
        server.stop()


ADAPTER_ON_HELD_OUT = ["--adapter", str(EXAMPLES / "harmless"), "--data"]


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        ("alpha_sweep.py", [f"test={HELD_OUT}", "--alphas", "0.5"], "--alphas: must be in [1, 10000]"),
        ("alpha_sweep.py", ["held-out", "--alphas", "5"], "expected NAME=FILE"),
        ("alpha_sweep.py", [f"a={HELD_OUT}", f"a={HELD_OUT}", "--alphas", "5"], "each NAME=FILE needs its own name"),
        (
            "alpha_sweep.py",
            [f"test={HELD_OUT}", "--alphas", "5", "--adapter", str(EXAMPLES / "harmless"), "no-such-adapter"],
            "is not a directory",
        ),
        ("length_shortcut.py", [str(HELD_OUT), "--max-length", "0"], "--max-length: must be > 0"),
        ("length_shortcut.py", [str(HELD_OUT), "--near", "-1"], "--near: must be >= 0"),
    ],
)
def test_example_scripts_refuse_bad_input_before_any_work(script: str, flags: list[str], message: str) -> None:
    args = [sys.executable, str(EXPERIMENTS / script), *ADAPTER_ON_HELD_OUT, *flags]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""  # nothing measured
