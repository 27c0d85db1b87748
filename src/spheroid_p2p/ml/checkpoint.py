"""Checkpoints in safetensors (never pickle), written atomically.

A block checkpoint holds the block's tensors and, in the safetensors metadata, the model
config (JSON), the block index, the config hash and the block's quality when known (its
trainer's recent CE, which the combined rule weighs it by). A trainer checkpoint adds the
AdamW state (per parameter: ``exp_avg``, ``exp_avg_sq``, ``step``), the trainer's step
counter and the state of its noise generator, so a killed worker resumes exactly where it
stopped.

Files are written to a temporary name in the same directory, fsynced, renamed over the
target and the directory fsynced: a reader sees the old file or the new one, never a torn one.
A trainer checkpoint also keeps the one before it (``NAME.prev``): if the newest is unreadable
(a disk fault, a file cut short by hand), :func:`load_trainer_or_previous` says so, moves it
aside (``NAME.corrupt``) and resumes from the previous one. Temporaries a killed writer left
behind are removed by :func:`remove_stale_temporaries` when a node starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from spheroid_p2p.ml.baselines import ARTransformer
from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.combine import MAX_QUALITY, known_quality
from spheroid_p2p.ml.config import ModelConfig, TrainConfig
from spheroid_p2p.ml.training import QUALITY_WINDOW, BlockTrainer

__all__ = [
    "CorruptCheckpointError",
    "atomic_write",
    "load_ar",
    "load_block",
    "load_trainer",
    "load_trainer_or_previous",
    "remove_stale_temporaries",
    "save_ar",
    "save_block",
    "save_trainer",
]

log = logging.getLogger(__name__)

BLOCK_FORMAT = "spheroid-block/1"
TRAINER_FORMAT = "spheroid-trainer/1"


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read back (not one written for another model)."""


def previous_of(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def atomic_write(
    path: Path, data: bytes, keep_previous: bool = False, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` atomically (tmp file, fsync, rename, fsync dir). With
    ``keep_previous`` the file it replaces becomes ``NAME.prev`` (a crash between the two
    renames leaves ``NAME.prev`` and no ``NAME``: the loader falls back to it). With
    ``durable=False`` the fsyncs are skipped: a reader still sees the old file or the new one,
    never a torn one, but a crash may bring the old one back (for hints that are safe to lose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_of(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _block_meta(block: BlockDenoiser, fmt: str) -> dict[str, str]:
    meta = {
        "format": fmt,
        "config": block.cfg.to_json(),
        "config_hash": block.cfg.config_hash(),
        "block_index": str(block.index),
    }
    quality = known_quality(block.quality)
    if quality is not None:  # (a diverged trainer's CE is not kept: the block loads unknown)
        meta["quality"] = repr(quality)
    return meta


def _quality(meta: dict[str, str], path: Path) -> float | None:
    """The block's quality from the metadata (None when the file has none)."""
    if "quality" not in meta:
        return None
    try:
        value = known_quality(float(meta["quality"]))
    except ValueError:
        value = None
    if value is None:
        raise ValueError(
            f"{path}: quality {meta['quality']!r} is not a CE in [0, {MAX_QUALITY:g}] nats; "
            "write the checkpoint again with save_block"
        )
    return value


def block_bytes(block: BlockDenoiser) -> bytes:
    """The safetensors encoding of a block (what :func:`save_block` writes)."""
    tensors = {k: v.detach().contiguous() for k, v in block.state_dict().items()}
    return st_save(tensors, metadata=_block_meta(block, BLOCK_FORMAT))


def save_block(path: Path, block: BlockDenoiser) -> None:
    """Write one block's weights and config."""
    atomic_write(path, block_bytes(block))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporaries :func:`atomic_write` leaves when killed mid-write
    (``.NAME.PID.tmp``) in ``directory``; returns what was removed. Call it only where no
    writer of this process is running (node start-up)."""
    removed = []
    for tmp in directory.glob(".*.tmp") if directory.is_dir() else ():
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(
            f"{path} is not a readable safetensors checkpoint: {exc}"
        ) from exc
    return tensors, meta


def _config(meta: dict[str, str], path: Path, expect: ModelConfig | None) -> ModelConfig:
    if "config" not in meta:
        raise ValueError(f"{path} has no model config in its metadata")
    cfg = ModelConfig.from_json(meta["config"])
    if expect is not None and cfg.config_hash() != expect.config_hash():
        raise ValueError(
            f"{path} was trained with a different model config "
            f"({cfg.config_hash()[:12]} != {expect.config_hash()[:12]})"
        )
    return cfg


def load_block(path: Path, expect: ModelConfig | None = None) -> BlockDenoiser:
    """Load a block written by :func:`save_block` (or a trainer checkpoint's block)."""
    tensors, meta = _read(path)
    cfg = _config(meta, path, expect)
    block = BlockDenoiser(cfg, int(meta["block_index"]))
    prefix = "block/" if meta.get("format") == TRAINER_FORMAT else ""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    block.load_state_dict(state, strict=True)
    block.quality = _quality(meta, path)
    return block


AR_FORMAT = "spheroid-ar/1"


def save_ar(path: Path, model: ARTransformer) -> None:
    """Write an autoregressive baseline model (config and layer count in the metadata)."""
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": AR_FORMAT,
        "config": model.cfg.to_json(),
        "config_hash": model.cfg.config_hash(),
        "n_layers": str(len(model.layers)),
    }
    atomic_write(path, st_save(tensors, metadata=meta))


def load_ar(path: Path) -> ARTransformer:
    """Load a model written by :func:`save_ar`."""
    tensors, meta = _read(path)
    if meta.get("format") != AR_FORMAT:
        raise ValueError(f"{path} is not an autoregressive model (format {meta.get('format')!r})")
    model = ARTransformer(_config(meta, path, None), int(meta["n_layers"]))
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model


def save_trainer(path: Path, trainer: BlockTrainer) -> None:
    """Write a worker's whole training state: block, AdamW moments, step, noise generator."""
    tensors: dict[str, torch.Tensor] = {
        f"block/{k}": v.detach().contiguous() for k, v in trainer.block.state_dict().items()
    }
    names = {id(p): n for n, p in trainer.block.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            state = trainer.optimizer.state.get(param)
            if not state:
                continue
            for key in ("exp_avg", "exp_avg_sq", "step"):
                value = state[key]
                tensors[f"opt/{names[id(param)]}/{key}"] = (
                    (value if isinstance(value, torch.Tensor) else torch.tensor(float(value)))
                    .detach()
                    .contiguous()
                )
    tensors["rng/noise"] = trainer.generator.get_state()
    # the batches' CE behind block.quality, so that a resumed trainer's quality is the same
    tensors["quality/recent_ce"] = torch.tensor(list(trainer.recent_ce), dtype=torch.float64)
    meta = _block_meta(trainer.block, TRAINER_FORMAT)
    meta["step_count"] = str(trainer.step_count)
    atomic_write(path, st_save(tensors, metadata=meta), keep_previous=True)


def load_trainer_or_previous(
    path: Path, tcfg: TrainConfig, expect: ModelConfig | None = None
) -> BlockTrainer | None:
    """The newest readable trainer checkpoint of ``path`` and ``NAME.prev``, or None when
    neither exists. An unreadable one is moved aside to ``NAME.corrupt`` (nothing is deleted)
    with a message naming it; one written for another model config still raises."""
    for candidate in (path, previous_of(path)):
        if not candidate.exists():
            continue
        try:
            trainer = load_trainer(candidate, tcfg, expect)
        except CorruptCheckpointError as exc:
            aside = candidate.with_name(candidate.name + ".corrupt")
            os.replace(candidate, aside)
            log.error("%s; moved it to %s and trying the previous checkpoint", exc, aside)
            continue
        if candidate != path:
            log.warning("resuming from the previous checkpoint %s", candidate)
        return trainer
    return None


def load_trainer(path: Path, tcfg: TrainConfig, expect: ModelConfig | None = None) -> BlockTrainer:
    """Rebuild a :class:`BlockTrainer` from :func:`save_trainer`'s file."""
    tensors, meta = _read(path)
    if meta.get("format") != TRAINER_FORMAT:
        raise ValueError(f"{path} is not a trainer checkpoint (format {meta.get('format')!r})")
    block = load_block(path, expect)
    trainer = BlockTrainer(block.cfg, tcfg, block.index, seed=0, block=block)
    try:
        trainer.step_count = int(meta["step_count"])
        trainer.generator.set_state(tensors["rng/noise"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpointError(f"{path} misses its trainer state: {exc}") from exc
    recent = tensors.get("quality/recent_ce")  # absent in checkpoints before r14
    if recent is not None:
        if recent.dim() != 1 or not bool(torch.isfinite(recent).all()):
            raise CorruptCheckpointError(f"{path}: its recent CE is not a vector of numbers")
        trainer.recent_ce.extend(recent.tolist()[-QUALITY_WINDOW:])
    names = dict(block.named_parameters())
    for name, param in names.items():
        if f"opt/{name}/exp_avg" in tensors:
            trainer.optimizer.state[param] = {
                key: tensors[f"opt/{name}/{key}"].clone()
                for key in ("exp_avg", "exp_avg_sq", "step")
            }
    return trainer
