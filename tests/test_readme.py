"""The README's quick-start snippet runs as written against a live server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_snippet_streams_an_answer_from_gemma(gateway):
    snippet = next(block for block in python_blocks() if "stream=True" in block)
    assert 'base_url="http://127.0.0.1:8080/v1"' in snippet
    code = snippet.replace("http://127.0.0.1:8080", gateway.url)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EMPORION_API_KEY": gateway.key},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_quick_start_commands_are_the_ci_commands():
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text() and "make serve" in README.read_text()
