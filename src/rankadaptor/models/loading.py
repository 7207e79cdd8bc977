"""Load a causal LM from whatever the user names: an alias, a directory, a GGUF file, a hub id.

``load_model(spec)`` resolves ``spec`` in this order:

1. an asset alias (``smollm2-135m``): the cached safetensors copy, fetched on first use;
2. an existing ``.gguf`` file: dequantised to ``dtype`` by transformers;
3. an existing directory with ``pruning.json``: a pruned artefact (``rankadaptor.models.artefact``);
4. an existing directory with ``config.json``: a Hugging Face model directory;
5. something shaped like a hub id (``org/name``): ``from_pretrained`` when the hub is reachable,
   otherwise an immediate error (no network time-outs) naming the offline alternatives.

The weights are read in ``dtype`` (``rankadaptor.device.resolve_dtype``: None follows the CLI's
``--dtype``, "auto" is bfloat16 on a GPU that has it and float32 elsewhere) and the model is
moved to ``device`` (``resolve_device``: None / "auto" is CUDA when present, else the CPU), or
spread over the visible GPUs with ``device_map="auto"`` (``rankadaptor.device.plan_device_map``,
planned on a weightless copy first, so a model that cannot be placed is refused before it loads).
The returned ``identity`` dict is what results files record about the model, its dtype included;
the device is not part of it (it is where the run happened, not what was loaded).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from rankadaptor import assets
from rankadaptor import device as dev
from rankadaptor.device import resolve_device
from rankadaptor.errors import RankAdaptorError, first_line, user_file_errors
from rankadaptor.fileio import read_json
from rankadaptor.models.artefact import load_pruned

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    identity: dict


def model_source(spec: str | os.PathLike) -> str:
    """What kind of model ``spec`` names: "alias", "gguf", "pruned", "local" or "hub".

    Cheap (looks at the path only), so commands can refuse a bad spec before they write anything.
    """
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if spec_str in model_aliases() and not path.exists():
        return "alias"
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    if path.is_dir() and (path / "pruning.json").is_file():
        return "pruned"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RankAdaptorError(
                f"{path} is a directory without config.json or pruning.json, so it is neither a "
                "Hugging Face model directory nor a pruned artefact; pass the directory written by "
                "save_pretrained (or `rankadaptor prune`), a .gguf file or an alias")
        return "local"
    if path.exists():
        raise RankAdaptorError(f"{path} is a file but not a .gguf model; pass a model directory or a .gguf file")
    if HUB_ID.fullmatch(spec_str) and not spec_str.startswith(("./", "../")):
        return "hub"
    raise RankAdaptorError(
        f"model {spec_str!r} is not an alias ({', '.join(model_aliases())}), not an existing path, and "
        "not a hub id of the form org/name; check the spelling or the path")


def model_aliases() -> list[str]:
    return [a.name for a in assets.ASSETS.values() if a.kind == "model"]


def load_model(spec: str | os.PathLike, dtype=None, device=None, device_map: str | None = None,
               allow_offload: bool = False) -> LoadedModel:
    """Load ``spec`` (see the module docstring) in eval mode with its tokenizer, on ``device`` or spread by ``device_map``."""
    spec_str = str(spec)
    source = model_source(spec_str)
    device = resolve_device(device)  # an unusable device or dtype fails before a slow load
    dtype = dev.resolve_dtype(dtype, device)
    placement = None
    if device_map is not None:
        meta = skeleton(spec_str, dtype)
        placement = dev.plan_device_map(meta, device_map, allow_offload) if meta is not None else None
        placement = placement or (device_map, allow_offload)  # a GGUF file is planned once its weights are read
    path = Path(spec_str).expanduser()
    if source == "alias":
        path = assets.ensure(spec_str)  # every file checked against the manifest's sha256 (assets._check)
        model, tok = _load_hf_dir(path, dtype)
        sha = assets.manifest_sha256(spec_str, "model.safetensors")  # so this hash is the loaded bytes'
        return _finish(model, tok, spec_str, path, sha, "alias", device, placement)
    if source == "gguf":
        model, tok = load_gguf(path, dtype)
        return _finish(model, tok, spec_str, path, weights_sha256(path), "gguf", device, placement)
    if source == "pruned":
        tok = _load_tokenizer(path)
        model = load_pruned(path, dtype)
        return _finish(model, tok, spec_str, path, weights_sha256(path), "pruned", device, placement)
    if source == "local":
        model, tok = _load_hf_dir(path, dtype)
        return _finish(model, tok, spec_str, path, weights_sha256(path), "local", device, placement)
    return _load_hub(spec_str, dtype, model_aliases(), device, placement)


def skeleton(spec: str | os.PathLike, dtype=None):
    """The model ``spec`` names with its weights on the meta device (shapes and dtypes only, no memory).

    What memory estimates and device maps are computed from before anything loads; None where the
    shapes are not known without reading the weights (a GGUF file, a hub id that is not cached).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    spec_str = str(spec)
    source = model_source(spec_str)
    dtype = dev.resolve_dtype(dtype, resolve_device(None)) if not isinstance(dtype, torch.dtype) else dtype
    path = Path(spec_str).expanduser()
    if source == "pruned":
        from rankadaptor.models.artefact import build_skeleton, read_manifest

        return build_skeleton(read_manifest(path), dtype)[0]  # the manifest checked, as load_pruned does
    if source == "gguf":
        return None
    if source == "alias":
        path = assets.ensure(spec_str)
    elif source == "hub":
        path = _hf_cache_snapshot(spec_str)
        if path is None:
            return None
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


# --------------------------------------------------------------------------- sources


def _load_hf_dir(path: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    # cheap parts first, each blamed on its own file: config.json, the tokenizer, then the weights
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except user_file_errors() as exc:
        raise RankAdaptorError(f"{path / 'config.json'} cannot be used ({first_line(exc)}); it is damaged or not a "
                               "transformers model config: save the model again with save_pretrained") from exc
    tokenizer = _load_tokenizer(path)
    log.info("loading model from %s", path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, local_files_only=True)
    except user_file_errors() as exc:
        raise RankAdaptorError(f"cannot load the model in {path}: {type(exc).__name__}: {first_line(exc)}; check "
                               "its config.json and weights files, or save the model again with save_pretrained") from exc
    return model, tokenizer


# files one of which a tokenizer needs (tokenizer_config.json alone only says which class to build)
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer.tiktoken")


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in VOCAB_FILES):
        raise RankAdaptorError(f"{path} has no tokenizer (none of {', '.join(VOCAB_FILES)}); save it next to the "
                               f"model with tokenizer.save_pretrained({str(path)!r})")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except user_file_errors() as exc:
        raise RankAdaptorError(f"the tokenizer in {path} cannot be loaded ({first_line(exc)}); save it again with "
                               "tokenizer.save_pretrained") from exc


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """Dequantise a GGUF file into a plain (unquantised, serialisable) transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising GGUF %s", path)
    kw = dict(gguf_file=path.name, local_files_only=True)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, **kw)
        gmodel = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kw)
    except user_file_errors() as exc:
        raise RankAdaptorError(f"cannot load GGUF {path}: {first_line(exc)}") from exc
    # transformers marks a GGUF-loaded model as quantised and refuses to save it; rebuild the
    # same architecture from a config without the quantisation entry and move the weights over.
    cfg_dict = gmodel.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    config = type(gmodel.config).from_dict(cfg_dict)
    model = type(gmodel)(config).to(dtype)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RankAdaptorError(f"GGUF {path}: weights do not fit the architecture (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    return model.eval(), tok


def convert_gguf(gguf: Path, out: Path) -> None:
    """Write a GGUF model as an fp32 safetensors Hugging Face directory with its tokenizer."""
    model, tok = load_gguf(gguf, torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _load_hub(spec: str, dtype: torch.dtype, aliases: list[str], device, placement=None) -> LoadedModel:
    """A hub id: from the local HF cache or the network, never a long wait for a time-out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline_hint = (f"no local path {spec!r} exists and the Hugging Face hub is not reachable from here, "
                    f"so the hub id {spec!r} cannot be downloaded; "
                    f"use an alias ({', '.join(aliases)}), a local Hugging Face model directory, or a .gguf file")
    offline = hub_unreachable()
    if offline and not _in_hf_cache(spec):
        raise RankAdaptorError(offline_hint)  # before transformers retries the network for ~30 s
    try:
        with _hub_offline(offline):
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, local_files_only=offline)
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=offline)
    except user_file_errors() as exc:
        if offline and isinstance(exc, OSError):
            raise RankAdaptorError(offline_hint) from exc
        raise RankAdaptorError(f"cannot load {spec!r} from the hub: {first_line(exc)}") from exc
    snapshot = _hf_cache_snapshot(spec)  # where the hub files now lie, for the identity hash
    sha = weights_sha256(snapshot) if snapshot else None
    return _finish(model, tok, spec, snapshot or Path(spec), sha, "hub", device, placement)


def _hf_cache_snapshot(spec: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(spec, "config.json")
    except ValueError:  # not a valid repo id after all
        return None
    return Path(found).parent if isinstance(found, str) else None


def _in_hf_cache(spec: str) -> bool:
    return _hf_cache_snapshot(spec) is not None


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Some transformers look-ups (adapter config) ignore local_files_only; the hub flag stops them."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], hf_constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def hub_unreachable() -> bool:
    """True when the Hugging Face hub cannot be used: ``HF_HUB_OFFLINE`` is set, or it does not answer."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not _hub_reachable()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One short request to the hub endpoint (honours proxies); DNS failure returns at once."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/models?limit=1", method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:
        return True  # the server answered; the request itself is not what matters
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- identity


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, or of the sorted (name, sha256) list of a directory's weights."""
    if path.is_file():
        return assets.sha256_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) == 1:
        return assets.sha256_file(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path)}\0{assets.sha256_file(f)}\n".encode())
    return h.hexdigest()


def weights_bytes(spec: str | os.PathLike) -> int:
    """Bytes of ``spec``'s weight files on disk (0 when unknown: a hub id, an alias not fetched yet).

    Cheap (file sizes only): commands use it to check, before any work, that an output of about
    this size fits on the disk.
    """
    source = model_source(spec)
    if source == "hub":
        return 0
    if source == "alias":
        try:
            files = read_json(assets.asset_dir(str(spec)) / assets.MANIFEST)["files"]
        except (RankAdaptorError, KeyError, TypeError):
            return 0
        return sum(int(m["size"]) for rel, m in files.items() if Path(rel).suffix in WEIGHT_SUFFIXES)
    path = Path(spec).expanduser()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    return sum(f.stat().st_size for f in files)


def _finish(model, tok, spec: str, path: Path, sha: str | None, source: str, device, placement=None) -> LoadedModel:
    from rankadaptor.checks import CORRUPT_WEIGHTS, finite_tensors

    if isinstance(placement, tuple):  # planned only now that the weights are read (GGUF)
        placement = dev.plan_device_map(model, *placement)
    if placement is not None:
        model = dev.place(model, placement).eval()
        device = placement
    else:
        model.to(device).eval()  # weights are read on the CPU first; one copy to the device after
    finite_tensors(model.named_parameters(), f"model {spec}", CORRUPT_WEIGHTS)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad token; eos is the usual choice
    cfg = model.config
    identity = dict(
        spec=spec, source=source, path=str(path.resolve()) if path.exists() else str(path),
        sha256=sha, n_params=sum(p.numel() for p in model.parameters()),
        model_type=getattr(cfg, "model_type", None),
        architecture=(getattr(cfg, "architectures", None) or [type(model).__name__])[0],
        n_layers=getattr(cfg, "num_hidden_layers", None), dtype=str(next(model.parameters()).dtype),
    )
    log.info("loaded %s (%s, %.1fM params) on %s", spec, identity["architecture"], identity["n_params"] / 1e6, device)
    return LoadedModel(model=model, tokenizer=tok, identity=identity)
