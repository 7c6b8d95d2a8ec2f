"""Builds llama.cpp's ``llama-server`` from the source inside the llama-cpp-python sdist.

The build (about 7 minutes on 2 cores) is cached under the user's cache directory and the binary
is copied next to the virtual environment's Python, where the engine looks for it first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import platformdirs

LLAMA_CPP_PYTHON = "0.3.36"  # its vendor/llama.cpp is llama.cpp commit 0c1e570
BINARY = "llama-server"
# -march=native, less AMX: on machines whose CPU has AMX but whose kernel or hypervisor does not
# grant the tile state, llama.cpp's AMX kernels crash at the first matrix product (SIGSEGV in
# ggml_backend_amx_mul_mat, seen here). AVX-512 and VNNI stay on. GCC keeps explicit -mno-*
# over what -march=native implies.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
BUILD_DIR = "build-noamx"  # a new name, so that no earlier AMX build in the cache is reused


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("emporion")) / "llama.cpp" / LLAMA_CPP_PYTHON


def installed_binary() -> Path:
    return Path(sys.executable).parent / BINARY


def find_llama_server(configured: Path | None = None) -> Path | None:
    for candidate in (configured, installed_binary(), shutil.which(BINARY)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def build_llama_server(log=print) -> Path:
    """Downloads the sdist with pip, builds ``llama-server`` with CMake, installs it; idempotent."""
    work = cache_dir()
    built = work / BUILD_DIR / "bin" / BINARY
    if not built.is_file():
        work.mkdir(parents=True, exist_ok=True)
        source = _unpacked_source(work, log)
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake is needed to build llama-server (apt-get install cmake g++)")
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        log(f"configuring llama.cpp from {source}")
        _run(
            [
                cmake,
                "-S",
                str(source),
                "-B",
                str(work / BUILD_DIR),
                *generator,
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_C_FLAGS={NO_AMX}",
                f"-DCMAKE_CXX_FLAGS={NO_AMX}",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
            ],
            work / "configure.log",
        )
        log("building llama-server (about 7 minutes on 2 cores; later installs reuse it)")
        _run([cmake, "--build", str(work / BUILD_DIR), "--target", BINARY, "-j", str(os.cpu_count() or 2)], work / "build.log")
    target = installed_binary()
    shutil.copy2(built, target)
    log(f"installed {target}")
    return target


def _unpacked_source(work: Path, log) -> Path:
    source = work / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if source.is_dir():
        return source
    sdist_dir = work / "sdist"
    log(f"fetching the llama-cpp-python {LLAMA_CPP_PYTHON} source distribution with pip")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
            "-d",
            str(sdist_dir),
        ],
        work / "download.log",
    )
    archive = next(sdist_dir.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return source


def _run(command: list[str], log_file: Path) -> None:
    with log_file.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command[:3])} … failed (exit {result.returncode}); see {log_file}\n{tail}")
