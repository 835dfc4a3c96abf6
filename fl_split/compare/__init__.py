"""The comparison of schemes and codecs at equal measured bytes (``fl-split compare``, issue 14; in progress)."""

from fl_split.compare.codec_error import codec_error_curves, ordering_at, plot_codec_error

__all__ = ["codec_error_curves", "ordering_at", "plot_codec_error"]
