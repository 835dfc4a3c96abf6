"""Data-parallel training with the project's codecs: a PyTorch DDP communication hook."""

from fl_split.ddp.hook import CodecHookState, codec_hook, register_codec_hook

__all__ = ["CodecHookState", "codec_hook", "register_codec_hook"]
