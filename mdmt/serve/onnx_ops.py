"""ONNX translations of the two operators the segment-GEMM models (``m3oe``, ``m2m``) use and the
standard ONNX exporter cannot translate.

Training code is not touched: these functions are used only by :func:`mdmt.serve.export.export_module`
(``torch.onnx.export(..., custom_translation_table=TRANSLATIONS)``), and only for the graph that is
written to ``model.onnx``.

* ``aten.sort.stable`` (what ``torch.argsort(..., stable=True)`` becomes, e.g. in
  :class:`~mdmt.layers.DomainSegments`): ONNX ``TopK`` with ``k`` = the whole axis. ONNX specifies
  that ``TopK`` breaks ties by the lower index first, which is exactly a stable sort.
* ``mdmt::segment_linear`` (:func:`mdmt.layers.segment_linear`): rows ``offsets[g-1]:offsets[g]`` of
  ``x [N, in]`` times ``weight[g] [in, out]`` plus ``bias[g]``. The number of segments ``G`` is
  fixed by the weights' shape (domains, or domains × tasks), so the graph holds ``G`` branches, each
  a ``Slice`` of the rows by the run-time offsets, one ``MatMul`` and the bias, and ``Concat``\s
  them: the same per-segment GEMMs as the training kernel, no FLOP on another segment's weights,
  and an empty segment is a zero-row slice.

Example::

    torch.onnx.export(module, args, "m.onnx", dynamo=True, custom_translation_table=TRANSLATIONS)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.tensor_typing import TReal

import mdmt.layers  # noqa: F401 - registers torch.ops.mdmt.segment_linear

__all__ = ["TRANSLATIONS", "sort_stable", "segment_linear"]


def sort_stable(
    self: TReal, stable: Optional[bool] = None, dim: int = -1, descending: bool = False
) -> tuple[TReal, INT64]:
    """``sort.stable(self, *, stable, dim, descending) -> (values, indices)`` as ``TopK`` over the whole axis.

    ``TopK`` returns equal values in index order (ONNX spec), so the result is stable whether or not
    ``stable`` is set.
    """
    k = op.Reshape(op.Gather(op.Shape(self), op.Constant(value_int=dim), axis=0), op.Constant(value_ints=[1]))
    values, indices = op.TopK(self, k, axis=dim, largest=descending, sorted=True)
    return values, indices


def segment_linear(x: FLOAT, weight: FLOAT, bias: Optional[FLOAT], offsets: INT64) -> FLOAT:
    """``x [N, in]``, ``weight [G, in, out]``, ``bias [G, out]`` or None, ``offsets [G]`` -> ``[N, out]``.

    ``G`` is fixed when the graph is built (the weights' first dimension); ``N`` and the offsets are
    not. Segment ``g`` is the row slice ``offsets[g-1]:offsets[g]`` (``0:offsets[0]`` for the first),
    which may be empty.
    """
    G = weight.shape[0] if weight.shape is not None else None
    if not isinstance(G, int):
        raise ValueError(f"mdmt::segment_linear: the number of segments must be static, got {G!r}")
    offsets = op.Cast(offsets, to=INT64.dtype)
    zero = op.Constant(value_ints=[0])
    pieces = []
    for g in range(G):
        start = zero if g == 0 else op.Slice(offsets, op.Constant(value_ints=[g - 1]), op.Constant(value_ints=[g]))
        end = op.Slice(offsets, op.Constant(value_ints=[g]), op.Constant(value_ints=[g + 1]))
        rows = op.Slice(x, start, end, zero)  # [n_g, in]
        y = op.MatMul(rows, op.Gather(weight, op.Constant(value_int=g), axis=0))  # [n_g, out]
        if bias is not None:
            y = op.Add(y, op.Gather(bias, op.Constant(value_int=g), axis=0))
        pieces.append(y)
    return op.Concat(*pieces, axis=0)


#: ``{torch op: ONNX translation}`` for ``torch.onnx.export(custom_translation_table=...)``
TRANSLATIONS: dict[Callable, Callable] = {
    torch.ops.aten.sort.stable: sort_stable,
    torch.ops.mdmt.segment_linear.default: segment_linear,
}
