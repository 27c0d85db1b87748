"""What a replica accepts from others (09 §9.4, §9.8): pure checks of delta headers and of
fetched versions against the block's own tensors. No networking, no state: the replica calls
them with its base and the rule's parameters, and acts on the problem they name."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from spheroid_p2p.ml.averaging import (
    ENCODING_DTYPES,
    SCALE_SUFFIX,
    check_delta,
    decode_delta,
    delta_of,
    int8_scale_shape,
)
from spheroid_p2p.node.store import wire_dtype
from spheroid_p2p.wire.deltas import DeltaHeader
from spheroid_p2p.wire.manifests import ENCODINGS

__all__ = ["SetCheck", "delta_layout_problem", "join_check", "version_check"]

#: Judges a complete fetched set's tensors: the problem, or None to accept it.
SetCheck = Callable[[dict[str, torch.Tensor]], str | None]


def delta_layout_problem(header: DeltaHeader, base: Mapping[str, torch.Tensor]) -> str | None:
    """Whether a delta header names exactly the block's tensors in its encoding (names,
    dtypes, shapes, int8 scales), judged before any buffer is allocated for it."""
    encoding = ENCODINGS.get(header.encoding)
    if encoding not in ENCODING_DTYPES:
        return f"unknown encoding {header.encoding}"
    want: dict[str, tuple[int, tuple[int, ...]]] = {}
    code = wire_dtype(ENCODING_DTYPES[encoding])
    for name, t in base.items():
        want[name] = (code, tuple(t.shape))
        if encoding == "int8":
            want[name + SCALE_SUFFIX] = (wire_dtype(torch.float32), int8_scale_shape(t.shape))
    got = {e.name: (e.dtype, tuple(e.shape)) for e in header.tensors}
    if got != want:
        wrong = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
        return f"tensors differ from the block's: {wrong[:3]}"
    return None


def _same_layout(
    tensors: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]
) -> str | None:
    if set(tensors) != set(like):
        return "tensor names differ from the block's"
    for name, t in like.items():
        got = tensors[name]
        if got.dtype != t.dtype or got.shape != t.shape:
            return f"tensor {name} differs from the block's"
    return None


def join_check(like: Mapping[str, torch.Tensor]) -> SetCheck:
    """A version a replica joins at has the block's tensors and is finite (with no base yet,
    there is no parent to bound its change against)."""

    def check(tensors: dict[str, torch.Tensor]) -> str | None:
        problem = _same_layout(tensors, like)
        if problem is not None:
            return problem
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"non-finite values in {name}"
        return None

    return check


def version_check(
    base: Mapping[str, torch.Tensor], base_norm: float, bound: float, encoding: str | None
) -> SetCheck:
    """A fetched set against the base (09 §9.8): a full version's weights (``encoding`` None)
    or an update in ``encoding``; the block's tensors, all finite, and a change of at most
    ``bound`` x the base's norm."""

    def check(tensors: dict[str, torch.Tensor]) -> str | None:
        if encoding is None:
            problem = _same_layout(tensors, base)
            if problem is not None:
                return problem
            change = delta_of(tensors, base)
        else:
            change, problem = decode_delta(tensors, encoding, base)
            if problem is not None:
                return problem
        return check_delta(change, base_norm, bound).problem

    return check
