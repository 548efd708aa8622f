"""The README's "Use it from your tools" example, run as written against a real server like
`make serve` (no API key, the shipped adapters), only its address changed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.server_process import ServerProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def like_make_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("tools-store")
    flags = ("--install-adapters", str(ROOT / "adapters" / "examples"))
    process = ServerProcess(store, tmp_path_factory.mktemp("tools-logs") / "server.log", *flags)
    yield process
    assert process.stop() == 0


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use it from your tools") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_the_readme_langchain_example_runs_as_written(like_make_serve: ServerProcess) -> None:
    code = readme_example().replace("http://127.0.0.1:8000", like_make_serve.url)
    printed: list[object] = []  # what the example prints, as objects
    exec(compile(code, "README.md", "exec", dont_inherit=True), {"__name__": "readme", "print": printed.append})
    answer, stronger, structured, called = printed
    assert isinstance(answer, str) and answer and isinstance(stronger, str) and stronger
    for city in (structured, called):
        assert type(city).__name__ == "City" and city.country in ("France", "Germany", "Italy"), city
