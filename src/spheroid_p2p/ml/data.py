"""Byte data: corpora as uint8 streams, random training windows, fixed evaluation windows.

Design note §4. A corpus is any UTF-8 text file, or a WikiText raw folder (``wiki.*.raw``);
text is kept exactly as stored. Every model evaluates on the same fixed, non-overlapping
windows, so their CE figures are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["EMBEDDED", "ByteCorpus", "corpus_from_bytes", "load_corpus"]

#: The name under which ``load_corpus`` returns the project's generated corpus.
EMBEDDED = "embedded"


@dataclass(frozen=True)
class ByteCorpus:
    """A training stream and an evaluation stream of bytes (uint8 tensors)."""

    name: str
    train: torch.Tensor
    eval: torch.Tensor

    def batch(self, batch_size: int, context: int, generator: torch.Generator) -> torch.Tensor:
        """(B, T+1) windows at uniformly random offsets of the training stream, as int64."""
        hi = self.train.numel() - context - 1
        if hi <= 0:
            raise ValueError(
                f"training stream of {self.train.numel()} bytes is shorter than "
                f"one window of {context + 1}"
            )
        starts = torch.randint(0, hi + 1, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(context + 1)[None, :]  # (B, T+1)
        return self.train[idx].long()

    def eval_windows(self, context: int, count: int) -> torch.Tensor:
        """(count, T+1) fixed, non-overlapping windows spread evenly over the eval stream."""
        n = self.eval.numel()
        stride = n // count
        if stride < context + 1:
            count = n // (context + 1)
            stride = context + 1
        if count == 0:
            raise ValueError(f"evaluation stream of {n} bytes is shorter than one window")
        starts = torch.arange(count) * stride
        idx = starts[:, None] + torch.arange(context + 1)[None, :]
        return self.eval[idx].long()


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def corpus_from_bytes(name: str, data: bytes, eval_fraction: float = 0.1) -> ByteCorpus:
    """First ``1 - eval_fraction`` of ``data`` for training, the rest for evaluation."""
    cut = int(len(data) * (1 - eval_fraction))
    return ByteCorpus(name, _bytes_tensor(data[:cut]), _bytes_tensor(data[cut:]))


def load_corpus(path: str | Path, eval_fraction: float = 0.1) -> ByteCorpus:
    """Load a corpus.

    * ``"embedded"``: the project's own generated corpus (:mod:`spheroid_p2p.ml.corpus`);
    * a WikiText raw folder: train on ``wiki.train.raw`` if present, else on
      ``wiki.valid.raw`` ("wt2-small"); evaluate on ``wiki.test.raw``;
    * a text file: first ``1 - eval_fraction`` for training, the rest for evaluation.
    """
    if str(path) == EMBEDDED:
        from spheroid_p2p.ml.corpus import embedded_corpus

        return corpus_from_bytes(EMBEDDED, embedded_corpus(), eval_fraction)
    path = Path(path)
    if path.is_dir():
        test = path / "wiki.test.raw"
        train = path / "wiki.train.raw"
        name = "wt2"
        if not train.exists():
            train, name = path / "wiki.valid.raw", "wt2-small"
        if not (train.exists() and test.exists()):
            raise FileNotFoundError(f"{path} is not a WikiText raw folder (wiki.*.raw)")
        return ByteCorpus(name, _bytes_tensor(train.read_bytes()), _bytes_tensor(test.read_bytes()))
    return corpus_from_bytes(path.stem, path.read_bytes(), eval_fraction)
