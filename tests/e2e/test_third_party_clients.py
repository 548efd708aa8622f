"""The README's "Use it from your tools" examples (LangChain, the `openai` SDK, LiteLLM), run as
written against a real server like `make serve` (no API key, the shipped adapters), only its address
changed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from qadapter.testing.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def like_make_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("tools-store")
    flags = ("--install-adapters", str(ROOT / "adapters" / "examples"))
    process = ServerProcess(store, tmp_path_factory.mktemp("tools-logs") / "server.log", *flags)
    yield process
    assert process.stop() == 0


def run_readme_example(index: int, server: ServerProcess) -> list[object]:
    """Run the section's `index`-th Python block against `server`; what it prints, as objects."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use it from your tools") : readme.index("## Test it")]
    code = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[index].replace("http://127.0.0.1:8000", server.url)
    printed: list[object] = []
    exec(compile(code, "README.md", "exec", dont_inherit=True), {"__name__": "readme", "print": printed.append})
    return printed


def test_the_readme_langchain_example_runs_as_written(like_make_serve: ServerProcess) -> None:
    answer, milder, structured, called = run_readme_example(0, like_make_serve)
    assert isinstance(answer, str) and answer and isinstance(milder, str) and milder
    for city in (structured, called):
        assert type(city).__name__ == "City" and city.country in ("France", "Germany", "Italy"), city


def test_the_readme_openai_example_streams_and_scores(like_make_serve: ServerProcess) -> None:
    answer, log_likelihood = run_readme_example(1, like_make_serve)
    assert isinstance(answer, str) and answer
    assert isinstance(log_likelihood, float) and -100 < log_likelihood < 0


def test_the_readme_litellm_example_runs_as_written(
    like_make_serve: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline here: its bundled copy, not a download
    (answer,) = run_readme_example(2, like_make_serve)
    assert isinstance(answer, str) and answer
    import litellm  # the knobs in extra_body reach the server: half a pair is refused, naming the missing one

    with pytest.raises(litellm.BadRequestError, match="omega"):
        litellm.completion(
            model="hosted_vllm/concise",
            api_base=f"{like_make_serve.url}/v1",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            extra_body={"alpha": 10},
        )
