"""What a gateway loads: without local embeddings, neither torch nor sentence-transformers (about
4 s and 380 MB) is ever imported, from ``import emporion.app`` through a whole start and stop.
Run in a fresh interpreter, since this one has long imported everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("torch", "sentence_transformers", "transformers")

CODE = """
import asyncio, json, sys
from pathlib import Path

def heavy():
    return sorted(name for name in sys.modules if name.split(".")[0] in {heavy_names})

import emporion.app
from emporion.settings import EmbeddingSettings, EngineSettings, Settings

seen = {{"imported": heavy()}}
settings = Settings(data_dir=Path(sys.argv[1]), engine=EngineSettings(enabled=False), embeddings=EmbeddingSettings(enabled=False))
app = emporion.app.build_app(settings)
seen["built"] = heavy()

async def serve():
    async with app.router.lifespan_context(app):
        seen["started"] = heavy()
        seen["embedder"] = app.state.deps.embedder is not None

asyncio.run(serve())
seen["stopped"] = heavy()
seen["embeddings_module"] = "emporion.engine.embeddings" in sys.modules
print(json.dumps(seen))
"""


def test_a_gateway_without_embeddings_never_imports_torch(tmp_path):
    env = {
        name: value for name, value in os.environ.items() if not name.startswith("EMPORION_")
    }  # the defaults: SQLite in tmp_path
    result = subprocess.run(
        [sys.executable, "-c", CODE.format(heavy_names=set(HEAVY)), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"imported": [], "built": [], "started": [], "embedder": False, "stopped": [], "embeddings_module": True}
