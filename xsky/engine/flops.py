"""Counting a model's FLOPs as it runs: matrix products, convolutions and attention.

A :class:`torch.overrides.TorchFunctionMode` sees every torch function and tensor method
called at the top level of Python code (module ``forward``\\ s call them directly), at no
cost beyond a Python call each. torch's own ``FlopCounterMode`` counts at the dispatcher
level, which is more complete, but its first use loads torch's compiler stack (about 10 s),
more than a cost plan of a small run may take.

A multiply-add counts as 2 FLOPs; elementwise work, normalisations and softmax are left
out (they are a few percent of an encoder's FLOPs). Products inside a composite Python
function of torch (``F.multi_head_attention_forward``) are not seen.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FlopCounter"]


def _numel(t: Any) -> int:
    return int(t.numel()) if hasattr(t, "numel") else 0


def _einsum_flops(args: tuple[Any, ...]) -> int:
    if not args or not isinstance(args[0], str):
        return 0
    operands = args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if len(operands) != 2:
        return 0
    inputs = args[0].replace(" ", "").split("->")[0].split(",")
    if len(inputs) != 2 or "." in "".join(inputs):
        return 0
    sizes: dict[str, int] = {}
    for letters, op in zip(inputs, operands, strict=True):
        for letter, n in zip(letters, op.shape, strict=False):
            sizes[letter] = max(sizes.get(letter, 1), int(n))
    return 2 * math.prod(sizes.values())


class _Mode:
    """The :class:`TorchFunctionMode` subclass, made on first use (torch loads lazily)."""

    cls: Any = None

    @classmethod
    def make(cls, counter: FlopCounter) -> Any:
        if cls.cls is None:
            import torch
            import torch.nn.functional as F
            from torch.overrides import TorchFunctionMode

            T = torch.Tensor
            matmuls = {torch.matmul, T.matmul, T.__matmul__, torch.mm, T.mm, torch.bmm, T.bmm}
            addmms = {torch.addmm, T.addmm, torch.baddbmm, T.baddbmm}
            convs = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}

            def flops(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                      out: Any) -> int:
                if func in matmuls:
                    return 2 * _numel(out) * int(args[0].shape[-1])
                if func is T.__rmatmul__:
                    return 2 * _numel(out) * int(args[1].shape[-1])
                if func in addmms:
                    return 2 * _numel(out) * int(args[1].shape[-1])
                if func is F.linear:
                    return 2 * _numel(out) * int(args[0].shape[-1])
                if func in convs:
                    w = args[1] if len(args) > 1 else kwargs["weight"]
                    return 2 * _numel(out) * math.prod(int(s) for s in w.shape[1:])
                if func is F.scaled_dot_product_attention:
                    q, k = args[0], args[1]
                    s = int(k.shape[-2])
                    return 2 * _numel(q) * s + 2 * _numel(out) * s
                if func is torch.einsum:
                    return _einsum_flops(args)
                return 0

            class Mode(TorchFunctionMode):
                def __init__(self, owner: FlopCounter) -> None:
                    super().__init__()
                    self.owner = owner

                def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                                       kwargs: dict[str, Any] | None = None) -> Any:
                    kwargs = kwargs or {}
                    out = func(*args, **kwargs)
                    self.owner.total += flops(func, args, kwargs, out)
                    return out

            cls.cls = Mode
        return cls.cls(counter)


class FlopCounter:
    """A context manager counting the FLOPs of the torch calls made inside it (this thread).

    Examples
    --------
    >>> import torch
    >>> from xsky.engine.flops import FlopCounter
    >>> with FlopCounter() as c:
    ...     _ = torch.ones(4, 3) @ torch.ones(3, 5)
    >>> c.total
    120
    """

    def __init__(self) -> None:
        self.total = 0
        self._mode: Any = None

    def __enter__(self) -> FlopCounter:
        self._mode = _Mode.make(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)

