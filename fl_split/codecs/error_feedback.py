"""Error feedback (EF) for any codec: remember what compression dropped and send it next time."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from fl_split.codecs.base import Codec


class ErrorFeedback:
    """Wrap a codec with per-stream error feedback (Seide et al. 2014; Karimireddy et al. 2019).

    ``encode(x, key)`` encodes ``x + e[key]`` and stores ``e[key] = (x + e[key]) - decode(payload)``:
    the residual is measured against exactly what the receiver will reconstruct. Streams are
    independent (a key per client id, parameter name, or ``(client, name)`` tuple), so one wrapper
    can serve many clients; its memory is :attr:`residual_nbytes`.

    Parameters
    ----------
    codec:
        Any codec from :func:`~fl_split.codecs.create_codec`.
    residual_dtype:
        dtype the residuals are stored in (default float32; bfloat16 halves the memory of
        FL with many clients at a small accuracy cost).
    """

    def __init__(self, codec: Codec, *, residual_dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(codec, Codec):
            raise TypeError(f"ErrorFeedback wraps a Codec, got {type(codec).__name__}")
        if not residual_dtype.is_floating_point:
            raise TypeError(f"residual_dtype must be a floating dtype, got {residual_dtype}")
        self.codec = codec
        self.residual_dtype = residual_dtype
        self._residuals: dict[Hashable, torch.Tensor] = {}

    def encode(self, x: torch.Tensor, key: Hashable = None) -> bytes:
        """Encode ``x`` plus the residual of stream ``key``; update that residual."""
        residual = self._residuals.get(key)
        if residual is not None and residual.shape != x.shape:
            raise ValueError(
                f"error feedback stream {key!r} holds a residual of shape {tuple(residual.shape)} but got a "
                f"tensor of shape {tuple(x.shape)}; use one key per tensor, or reset({key!r}) first"
            )
        corrected = x.detach().float()
        if residual is not None:
            corrected = corrected + residual.to(device=corrected.device, dtype=torch.float32)
        payload = self.codec.encode(corrected.to(x.dtype))
        decoded = self.codec.decode(payload, device=corrected.device).float()
        self._residuals[key] = (corrected - decoded).to(self.residual_dtype)
        return payload

    def decode(self, payload: bytes, device: torch.device | str | None = None) -> torch.Tensor:
        """Decode with the wrapped codec (the receiver needs no residual)."""
        return self.codec.decode(payload, device)

    def residual(self, key: Hashable = None) -> torch.Tensor | None:
        """The residual currently held for ``key`` (``None`` if the stream has not sent yet)."""
        return self._residuals.get(key)

    def set_residual(self, key: Hashable, residual: torch.Tensor) -> None:
        """Restore the residual of ``key`` (e.g. read back from a Flower ``context.state``)."""
        self._residuals[key] = residual.detach().to(self.residual_dtype)

    def reset(self, key: Hashable = None, *, all_streams: bool = False) -> None:
        """Forget the residual of ``key`` (or of every stream with ``all_streams=True``)."""
        if all_streams:
            self._residuals.clear()
        else:
            self._residuals.pop(key, None)

    @property
    def num_streams(self) -> int:
        """Number of streams holding a residual."""
        return len(self._residuals)

    @property
    def residual_nbytes(self) -> int:
        """Bytes of tensor memory held by all residuals (the EF memory cost)."""
        return sum(r.numel() * r.element_size() for r in self._residuals.values())

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.codec!r}, streams={self.num_streams}, residual_nbytes={self.residual_nbytes})"
