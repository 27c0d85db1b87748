"""What a replica accepts from others (09 §9.8): pure checks of fetched versions against the
block's own tensors. No networking, no state: the replica calls them with its base and the
rule's parameters, and acts on the problem they name."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from spheroid_p2p.ml.averaging import check_values, delta_of

__all__ = ["SetCheck", "join_check", "version_check"]

#: Judges a complete fetched set's tensors: the problem, or None to accept it.
SetCheck = Callable[[dict[str, torch.Tensor]], str | None]


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


def version_check(base: Mapping[str, torch.Tensor], base_norm: float, bound: float) -> SetCheck:
    """A fetched version against the base (09 §9.8): the block's tensors, all finite, and a
    change of at most ``bound`` x the base's norm."""

    def check(tensors: dict[str, torch.Tensor]) -> str | None:
        problem = _same_layout(tensors, base)
        if problem is not None:
            return problem
        return check_values(delta_of(tensors, base), base_norm, bound).problem

    return check
