"""The local engine: one llama.cpp ``llama-server`` process per GGUF model, supervised as Ollama
does: started with Emporion, health-checked, restarted when it dies, stopped with Emporion.

llama-server batches concurrent sequences (continuous batching over ``parallel`` slots, each
with ``ctx_per_request`` tokens of context) and speaks OpenAI's wire format, so the
``openai_compat`` adapter talks to it like to any other upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Literal

import httpx

from emporion.limits.gate import Admission
from emporion.providers.base import Upstream
from emporion.settings import EngineSettings

log = logging.getLogger("emporion.engine")

State = Literal["stopped", "starting", "ready", "restarting", "failed"]
# What no local model honours: ``suffix`` (an insertion) would need /infill and fill-in-the-middle
# tokens, which Gemma 3 has not. Refused at planning, so a remote deployment of the model may serve it.
UNSUPPORTED = frozenset({"suffix"})


class EngineFailed(RuntimeError):
    pass


class LlamaServer:
    def __init__(
        self,
        model_id: str,
        gguf: Path,
        settings: EngineSettings,
        binary: Path,
        log_path: Path,
        chat_template: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.gguf = gguf
        self.settings = settings
        self.binary = binary
        self.log_path = log_path
        self.chat_template = chat_template
        self.port = _free_port()
        self.upstream = Upstream(
            name=f"local:{model_id}",
            # With a built-in template (which renders no tools), tools are called by grammar.
            adapter="llama_cpp" if chat_template else "openai_compat",
            base_url=f"http://127.0.0.1:{self.port}/v1",
            timeout_s=600.0,
            connect_timeout_s=5.0,
            local=True,
            data_collection="deny",
            developer_role=False,
            unsupported_parameters=UNSUPPORTED,
            llama_server=True,
        )
        self.admission = Admission(settings.parallel, settings.queue_size)
        self.state: State = "stopped"
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    def command(self) -> list[str]:
        s = self.settings
        args = [
            str(self.binary),
            "--model",
            str(self.gguf),
            "--alias",
            self.model_id,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ctx-size",
            str(s.ctx_per_request * s.parallel),
            "--parallel",
            str(s.parallel),
            "--no-kv-unified",
            "--threads",
            str(s.threads),
            "--threads-batch",
            str(s.threads_batch),
            "--no-webui",
            "--metrics",
        ]
        if self.chat_template:
            args += ["--chat-template", self.chat_template, "--no-jinja"]
        else:
            args += ["--jinja"]
        # Dies with Emporion even on SIGKILL: no orphaned engine holding memory and a port.
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else args

    async def start(self) -> None:
        self._stopping = False
        self.state = "starting"
        try:
            await self._spawn_and_wait()
        except BaseException:
            self.state = "failed"
            await self._terminate()
            raise
        self.state = "ready"
        self._watcher = asyncio.create_task(self._watch(), name=f"engine-watch-{self.model_id}")

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._terminate()
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pid": self._process.pid if self._process else None,
            "port": self.port,
            "restarts": self.restarts,
            "running": self.admission.running,
            "queued": self.admission.waiting,
            "parallel": self.settings.parallel,
        }

    async def count_prompt_tokens(self, body: dict[str, Any]) -> int | None:
        """The real token count of a request's prompt, as this engine formats and tokenizes it
        (for billing a request that stopped before the engine reported usage); None when the
        engine cannot tell."""
        base = f"http://127.0.0.1:{self.port}"
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                if "messages" in body:
                    templated = await client.post(f"{base}/apply-template", json={"messages": body["messages"]})
                    prompt = templated.raise_for_status().json()["prompt"]
                else:
                    prompt = body.get("prompt")
                tokenized = await client.post(
                    f"{base}/tokenize", json={"content": prompt, "add_special": True, "parse_special": True}
                )
                return len(tokenized.raise_for_status().json()["tokens"])
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            return None

    async def _spawn_and_wait(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.command())}\n".encode())
            log_file.flush()
            self._process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )
        await self._wait_healthy(self._process)

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if process.returncode is not None:
                    raise EngineFailed(f"llama-server for {self.model_id} exited with {process.returncode}: {self._log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise EngineFailed(f"llama-server for {self.model_id} was not healthy after {self.settings.startup_timeout_s}s")

    async def _watch(self) -> None:
        backoff = self.settings.restart_backoff_s
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            self.state = "restarting"
            log.warning("llama-server for %s exited with %s; restarting in %.1fs", self.model_id, code, backoff)
            await asyncio.sleep(backoff)
            try:
                await self._spawn_and_wait()
            except EngineFailed as exc:
                log.error("%s", exc)
                await self._terminate()
                backoff = min(backoff * 2, 30.0)
                continue
            self.restarts += 1
            self.state = "ready"
            backoff = self.settings.restart_backoff_s

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
