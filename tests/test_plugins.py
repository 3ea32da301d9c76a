"""Providers are plugins: the built-ins and any installed package register through the `llmbus.providers`
entry points; `ModelConfig` is a union discriminated by provider; a new provider needs no edit in llmbus."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_items, write_spec
from llmbus.errors import ModelError, SpecError
from llmbus.providers import ModelConfig, price_of, registry, resolve_model
from llmbus.providers.cascade import CascadeConfig
from llmbus.providers.config import load_model_configs
from llmbus.providers.encoder import EncoderConfig
from llmbus.providers.head import HeadConfig
from llmbus.providers.local_config import LocalConfig
from llmbus.providers.openai_config import OpenAIConfig
from llmbus.providers.registry import GROUP, Registry

PACKAGE = ROOT / "src" / "llmbus"
BUILT_IN = {"local", "openai", "encoder", "head", "cascade"}

# A third party's whole plugin: one module and one entry point (what its pyproject's
# `[project.entry-points."llmbus.providers"]` line installs). Its model answers with the prompt's last line.
ECHO = '''
from typing import Literal
from llmbus.providers import Completion, ModelConfig


class EchoConfig(ModelConfig):
    provider: Literal["echo"] = "echo"
    upper: bool = False

    @classmethod
    def reference(cls, name):
        return {}


class EchoProvider:
    Config = EchoConfig

    def __init__(self, config):
        self.name, self.upper = config.name, config.upper

    def complete(self, request):
        text = request.prompt.strip().splitlines()[-1]
        return Completion(text=text.upper() if self.upper else text, tokens_in=len(request.prompt.split()))

    def check(self):
        pass

    def close(self):
        pass
'''


def install_echo(folder: Path) -> Path:
    """The echo plugin installed into `folder` as pip would lay it out: its module and its dist-info."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "llmbus_echo.py").write_text(ECHO)
    meta = folder / "llmbus_echo-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: llmbus-echo\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text(f"[{GROUP}]\necho = llmbus_echo:EchoProvider\n")
    return folder


def test_the_built_ins_and_litellm_are_registered_by_pyproject_entry_points():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    installed = {point.name: point.value for point in entry_points(group=GROUP)}
    assert BUILT_IN | {"litellm"} <= set(declared)
    assert {name: installed.get(name) for name in declared} == declared  # `pip install -e .` is up to date
    assert set(declared) <= set(registry().prefixes())


def test_the_litellm_plugin_lives_outside_llmbus():
    assert (ROOT / "src" / "llmbus_litellm" / "__init__.py").is_file()
    mentions = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "litellm" in p.read_text().lower()]
    # no provider code under src/llmbus knows it exists; only the table of extras lists `llmbus[litellm]`, the
    # extra that installs its package (what test_extras asks of every extra)
    assert mentions == ["extras.py"]


def test_model_config_is_the_providers_config_that_provider_names():
    assert type(ModelConfig(name="local:x", provider="local", gguf="x.gguf")) is LocalConfig
    assert type(ModelConfig.model_validate({"name": "openai:y", "provider": "openai",
                                            "base_url": "http://127.0.0.1:1/v1"})) is OpenAIConfig
    kinds = {name: type(config) for name, config in load_model_configs().items()}
    assert kinds == {"local:gemma-3-270m": LocalConfig}
    assert isinstance(resolve_model("encoder:/s"), EncoderConfig) and isinstance(resolve_model("head:/h"), HeadConfig)
    assert CascadeConfig(name="cascade:c", student="encoder:/s", teacher="openai:t").parts() == ("encoder:/s",
                                                                                                  "openai:t")
    assert not hasattr(OpenAIConfig(name="openai:z"), "gguf")  # each provider has only its own settings


def test_a_setting_of_another_provider_is_an_error_naming_the_file_and_field(tmp_path: Path):
    path = tmp_path / "llmbus.yaml"
    path.write_text(yaml.safe_dump({"models": {"openai:x": {"base_url": "http://127.0.0.1:1/v1", "gguf": "a"}}}))
    with pytest.raises(SpecError) as error:
        load_model_configs(path)
    assert str(error.value).startswith(f"{path}: models.openai:x:") and "gguf: unknown field" in str(error.value)


def test_an_unknown_prefix_names_the_registered_ones(tmp_path: Path):
    with pytest.raises(ModelError) as error:
        resolve_model("nope:thing")
    message = str(error.value)
    assert message.startswith("unknown model 'nope:thing': ") and "head, litellm, local, openai" in message
    path = tmp_path / "llmbus.yaml"
    path.write_text("models:\n  nope:x:\n    size: 3\n")
    with pytest.raises(SpecError) as error:
        load_model_configs(path)
    assert str(error.value).startswith(f"{path}: models.nope:x:") and "no provider 'nope' is registered" in str(
        error.value)


def test_head_joins_the_registry_priced_by_cpu():
    config = resolve_model("head:/judges/h")
    assert config.path == "/judges/h" and price_of(config).basis == "cpu"


def test_a_broken_or_foreign_entry_point_is_one_error_line():
    points = [EntryPoint("gone", "llmbus_no_such_module:Provider", GROUP), EntryPoint("json", "json:dumps", GROUP),
              EntryPoint("openai", "llmbus.providers.openai:OpenAIProvider", GROUP),
              EntryPoint("openai", "json:loads", GROUP)]  # a second registration of a prefix: the first wins
    local = Registry(points)
    assert local.prefixes() == ["gone", "json", "openai"]
    with pytest.raises(ModelError, match=r"provider 'gone' \(llmbus_no_such_module:Provider\) does not load"):
        local.provider_type("gone")
    with pytest.raises(ModelError, match=r"provider 'json' .* is not a provider: it needs a `Config`"):
        local.provider_type("json")
    assert local.config_type("openai") is OpenAIConfig
    with pytest.raises(ModelError, match=r"no provider 'x' \(registered: gone, json, openai\)"):
        local.provider_type("x")


def test_openai_models_load_neither_torch_nor_the_other_providers():
    code = ("import sys; from llmbus.providers import open_provider; p = open_provider('openai:m'); p.close(); "
            "print(sorted(m for m in ('torch', 'litellm', 'llmbus_litellm', 'llmbus.providers.encoder', "
            "'llmbus.providers.head', 'llmbus.providers.cascade', 'llmbus.train.student') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_third_party_plugin_adds_a_provider_with_no_edit_to_llmbus(tmp_path: Path):
    plugin = install_echo(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "llmbus.yaml").write_text("models:\n  echo:loud:\n    upper: true\n  echo:bad:\n    upper: maybe\n")
    code = ("import llmbus\nwith llmbus.get_model('echo:any') as m: print(m.prompt('first\\nsecond').text)\n"
            "from llmbus.providers import registry; print(','.join(registry().prefixes()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "LLMBUS_CONFIG": str(tmp_path / "none.yaml")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["second", "cascade,echo,encoder,head,litellm,local,openai"]

    # the CLI runs a task on it, and its own settings are read and checked from llmbus.yaml like any other's
    write_items(tmp_path / "items.jsonl", 12)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl", fewshot={"k": 0})

    def llmbus(*args: str, config: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env={**env, "LLMBUS_CONFIG": str(tmp_path / config),
                                                 "LLMBUS_DB": str(tmp_path / "calls.db")})

    bad = llmbus("run", str(task), "-m", "echo:loud", "--json", config="llmbus.yaml")
    assert bad.returncode == 2 and f"{tmp_path / 'llmbus.yaml'}: models.echo:bad:" in bad.stderr
    assert "upper: Input should be a valid boolean" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "good.yaml").write_text("models:\n  echo:loud:\n    upper: true\n")
    done = llmbus("run", str(task), "-m", "echo:loud", "--json", config="good.yaml")
    assert done.returncode == 0, done.stderr
    answered = json.loads(done.stdout)
    assert answered["items"] == 11  # the echoed "LABEL:" is no label: each call is logged as a parse error
    with sqlite3.connect(tmp_path / "calls.db") as db:
        outputs = {row[0] for row in db.execute("select raw_output from calls")}
    assert outputs == {"LABEL:"}  # echo:loud's own setting (upper) reached its provider
    assert not (PACKAGE / "providers" / "llmbus_echo.py").exists()
