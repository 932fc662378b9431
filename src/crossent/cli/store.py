"""Model folders and checkpoints: safetensors for tensors, JSON for everything else, no pickle.

A model folder (what `crossent train --out DIR` writes, what `--model DIR` reads):

    DIR/model.safetensors        the classifier's weights
    DIR/config.json              format + version, architecture, the input columns and their
                                 preprocessing (fitted numbers as JSON), class names, training
                                 options and history, sha256 of the weights
    DIR/checkpoint.safetensors   last epoch's model + optimizer + RNG state and the best epoch's
                                 weights, for --resume; the JSON part (epoch, history, options,
                                 stopping rule, schedule) lives in its safetensors metadata, so
                                 one atomic rename updates all of it at once

Pickle files (.pth, .pt, .pkl, torch.save output) can run arbitrary code when loaded: they are
recognised by their first bytes and refused, never opened.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import _files
from ._errors import CliError

FORMAT = "crossent-classifier"
# 1: numeric columns standardised ("scaling"); a crossent that reads only 1 still reads a model
#    whose every feature is numeric (its "preprocessing" adds median imputation, ignored there).
# 2: "preprocessing" with categorical or date columns, which a version-1 reader would misread.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
PICKLE_SUFFIXES = {".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".bin"}


def crossent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crossent")
    except PackageNotFoundError:  # running from a source tree without installation
        return "unknown"


# ---------------------------------------------------------------------------------------------
# recognising files


def _refuse_pickle(path: Path) -> None:
    raise CliError(
        f"'{path}' is a pickle file (torch.save / .pth), which can run code when loaded, so "
        "crossent never opens it; retrain with `crossent train` or convert the weights to "
        "safetensors"
    )


def check_safetensors(path: Path, what: str) -> None:
    """A safetensors file starts with an 8-byte header length, then a JSON header '{...'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":  # pickle protocol >= 2 / torch zip
        _refuse_pickle(path)
    if len(head) < 9 or head[8:9] != b"{":
        raise CliError(f"{what} '{path}' is corrupt or not a safetensors file; {_REDO}")


_REDO = "retrain it, or restore the folder from a backup"


def _safetensors_load(path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    check_safetensors(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as e:
        raise CliError(f"{what} '{path}' is corrupt ({e}); {_REDO}")
    return tensors, meta


def _safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().clone() for k, v in tensors.items()}, metadata)


# ---------------------------------------------------------------------------------------------
# model folders


def save_model(folder: str | Path, model: Any, config: dict[str, Any]) -> Path:
    """Write weights, then config.json naming the weights' sha256 (each file atomically)."""
    folder = Path(folder)
    from .config import numeric_only as plain_numbers

    blob = _safetensors_bytes(model.state_dict(), {"format": FORMAT})
    numeric_only = plain_numbers(config.get("preprocessing") or {"columns": []})
    config = {
        "format": FORMAT,
        "format_version": 1 if numeric_only else FORMAT_VERSION,
        "crossent_version": crossent_version(),
        **config,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    _files.write_bytes(folder / MODEL_FILE, blob)
    _files.write_json(folder / CONFIG_FILE, config)
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.exists():
        raise CliError(
            f"model folder '{folder}' does not exist; give the --out folder of a `crossent train` run"
        )
    if folder.is_file():
        if folder.suffix.lower() in PICKLE_SUFFIXES:
            _refuse_pickle(folder)
        raise CliError(
            f"'{folder}' is a file; give the model folder that holds {MODEL_FILE} and {CONFIG_FILE}"
        )
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.exists():
        pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            _refuse_pickle(pickles[0])
        raise CliError(
            f"'{folder}' is not a crossent model folder (no {CONFIG_FILE}); "
            "give the --out folder of a `crossent train` run"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CliError(f"'{cfg_path}' is corrupt (not valid JSON: {e}); {_REDO}")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CliError(
            f"'{cfg_path}' does not describe a crossent classifier; "
            "give the --out folder of a `crossent train` run"
        )
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CliError(
            f"model folder '{folder}' has format version {version} (written by crossent "
            f"{config.get('crossent_version', '?')}), but this crossent {crossent_version()} reads "
            f"versions {' and '.join(map(str, READABLE_VERSIONS))}; retrain the model or use the "
            "crossent that wrote it"
        )
    needed = ("task", "architecture", "features", "classes")
    missing = [k for k in needed if k not in config]
    if "scaling" not in config and "preprocessing" not in config:
        missing.append("scaling")
    if missing:
        raise CliError(f"'{cfg_path}' lacks {', '.join(missing)}; {_REDO}")
    return config


def load_model(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """(classifier in eval mode, config) from a model folder, every problem as a CliError."""
    from . import models

    folder = Path(folder)
    config = read_config(folder)
    weights = folder / MODEL_FILE
    if not weights.exists():
        raise CliError(f"model folder '{folder}' lacks {MODEL_FILE}; {_REDO}")
    check_safetensors(weights, "model file")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != config.get("weights_sha256"):
        raise CliError(
            f"'{weights}' does not match its {CONFIG_FILE} (changed or corrupt); {_REDO}"
        )
    state, _ = _safetensors_load(weights, "model file")
    model = models.build(config["architecture"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CliError(
            f"'{weights}' does not fit the architecture in {CONFIG_FILE} ({first}); {_REDO}"
        )
    model.eval()
    return model, config


# ---------------------------------------------------------------------------------------------
# checkpoints: model + optimizer + RNG state, flattened into one safetensors file


def save_checkpoint(
    path: str | Path,
    model: Any,
    optimizer: Any,
    rng: Any,
    meta: dict[str, Any],
    best_state: dict[str, Any] | None = None,
):
    """Tensors: model.*, best.* (the best epoch's weights), optim.<param>.<key>, rng.shuffle.
    JSON: the rest, in the metadata."""
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if hasattr(value, "dtype"):  # a tensor (Adam's step counter is a 0-d tensor too)
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors["rng.shuffle"] = rng.get_state()
    meta = {**meta, "optimizer_param_groups": opt["param_groups"], "optimizer_scalars": scalars}
    blob = _safetensors_bytes(tensors, {"crossent": json.dumps(meta)})
    _files.write_bytes(path, blob)


def load_checkpoint(path: str | Path, model: Any, optimizer: Any, rng: Any) -> dict[str, Any]:
    """Restore model, optimizer and RNG in place; return the JSON part, with the best epoch's
    weights under "best_state" (None in checkpoints without them)."""
    path = Path(path)
    tensors, raw = _safetensors_load(path, "checkpoint")
    try:
        meta = json.loads(raw["crossent"])
        model.load_state_dict(
            {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        )
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, pid, key = name.split(".", 2)
                state.setdefault(int(pid), {})[key] = value
        for pid, values in meta["optimizer_scalars"].items():
            state.setdefault(int(pid), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
        rng.set_state(tensors["rng.shuffle"])
        best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
        meta["best_state"] = best or None
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise CliError(
            f"checkpoint '{path}' is corrupt or incomplete ({e}); start again without --resume"
        )
    return meta
