"""timm's intermediate-feature API for the compactnets models: ``forward_intermediates`` and
``prune_intermediate_layers`` with timm's semantics (see ``timm/models/_features.py``), written once.

A model lists, in :meth:`FeatureStages._feature_steps`, the callables its ``forward_features`` runs, in order,
and the step that ends each level of its ``feature_info``; :meth:`FeatureStages._prune_after` removes the
modules after a level. ``forward_features`` itself stays plain module calls, scriptable and traceable; the
tests check that both give the same tensors.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn


def feature_take_indices(num_levels: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's index rule: None -> every level, an int n -> the last n levels, a sequence -> those levels
    (negative ones count from the end). Returns the absolute indices and the largest."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"last-n indices must be 1 to {num_levels}, got {indices}")
        take = list(range(num_levels - indices, num_levels))
    else:
        take = []
        for i in indices:
            index = num_levels + i if i < 0 else i
            if not 0 <= index < num_levels:
                raise ValueError(f"feature index {i} is out of range for {num_levels} levels")
            take.append(index)
    return take, max(take)


class FeatureStages:
    """Mixin for ``nn.Module`` models with a ``feature_info`` list (one dict per level, as timm's)."""

    def _feature_steps(self) -> tuple[list[Callable[[torch.Tensor], torch.Tensor]], list[int]]:
        """The steps of ``forward_features`` and, per feature level, the index of the step that produces it."""
        raise NotImplementedError

    def _prune_after(self, level: int) -> None:
        """Remove every module after feature level ``level`` (``forward_features`` then ends there)."""
        raise NotImplementedError

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature maps of the ``feature_info`` levels in ``indices`` (timm semantics), with the final
        features of ``forward_features`` unless ``intermediates_only``.

        Args:
            x: input batch (N, C, H, W).
            indices: None (all levels), n (the last n) or a sequence of level indices.
            norm: accepted for timm's API; these models have no final norm apart from their last stage.
            stop_early: stop after the last level wanted (the returned final features are then that level's).
            output_fmt: only 'NCHW'.
            intermediates_only: return the list of feature maps only.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', not {output_fmt!r}")
        steps, ends = self._feature_steps()
        take, max_index = feature_take_indices(len(ends), indices)
        wanted = {ends[i] for i in take}
        last = ends[max_index] if stop_early or intermediates_only else len(steps) - 1
        intermediates = []
        for i, step in enumerate(steps[: last + 1]):
            x = step(x)
            if i in wanted:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers no wanted level needs: the stages after the last one in ``indices`` and, with
        ``prune_head``, the classifier and pooling. Returns the absolute level indices."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, "")
        if max_index < len(self.feature_info) - 1 or prune_head:
            self._prune_after(max_index)
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        return take


def identity_after(sequential: nn.Sequential, last: int) -> None:
    """Replace the modules of ``sequential`` after index ``last`` by ``nn.Identity`` (keys of the rest kept)."""
    for i in range(last + 1, len(sequential)):
        sequential[i] = nn.Identity()
