"""ONNX translations of the two operators the segment-GEMM models (``m3oe``, ``m2m``) use and the
standard ONNX exporter cannot translate.

Training code is not touched: these functions are used only by :func:`mdmt.serve.export.export_module`
(``torch.onnx.export(..., custom_translation_table=TRANSLATIONS)``), and only for the graph that is
written to ``model.onnx``.

* ``aten.sort.stable`` (what ``torch.argsort(..., stable=True)`` becomes, e.g. in
  :class:`~mdmt.layers.DomainSegments`): ONNX ``TopK`` with ``k`` = the whole axis. ONNX specifies
  that ``TopK`` breaks ties by the lower index first, which is exactly a stable sort.
* ``mdmt::segment_linear`` (:func:`mdmt.layers.segment_linear`): rows ``offsets[g-1]:offsets[g]`` of
  ``x [N, in]`` times ``weight[g] [in, out]`` plus ``bias[g]``. The graph finds every row's segment
  ``g(i) = #{g : offsets[g] <= i}`` (empty segments included), multiplies every row by every
  segment's matrix in one batched ``MatMul`` (``[G, N, out]``) and keeps the row's own segment
  (``GatherElements``). At scoring time that spends ``G`` times the training kernel's FLOPs on a
  small ``G`` (domains, or domains × tasks), in exchange for one fixed-shape graph without a loop;
  every kept value is the same dot product as in PyTorch.

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

    A segment may be empty (equal consecutive offsets, or a first offset of 0): no row maps to it.
    """
    zero, one = op.Constant(value_ints=[0]), op.Constant(value_ints=[1])
    n = op.Shape(x, start=0, end=1)  # [1]
    rows = op.Range(op.Constant(value_int=0), op.Squeeze(n, zero), op.Constant(value_int=1))  # [N]
    offsets = op.Cast(offsets, to=INT64.dtype)
    ends = op.LessOrEqual(op.Unsqueeze(offsets, zero), op.Unsqueeze(rows, one))  # offsets[g] <= i: [N, G]
    seg = op.ReduceSum(op.Cast(ends, to=INT64.dtype), one, keepdims=False)  # g(i): [N]
    every = op.MatMul(op.Unsqueeze(x, zero), weight)  # x W_g for every segment g: [G, N, out]
    out_dim = op.Shape(weight, start=2, end=3)  # [1]
    index = op.Expand(op.Unsqueeze(seg, op.Constant(value_ints=[0, 2])), op.Concat(one, n, out_dim, axis=0))
    y = op.Squeeze(op.GatherElements(every, index, axis=0), zero)  # the row's own segment: [N, out]
    if bias is not None:
        y = op.Add(y, op.Gather(bias, seg, axis=0))
    return y


#: ``{torch op: ONNX translation}`` for ``torch.onnx.export(custom_translation_table=...)``
TRANSLATIONS: dict[Callable, Callable] = {
    torch.ops.aten.sort.stable: sort_stable,
    torch.ops.mdmt.segment_linear.default: segment_linear,
}
