"""What varies per model architecture, declared as data: where the decoder layers are, which norm feeds which
projections. Quantization (AWQ's scale folding, layer-by-layer calibration) reads these maps; nothing else
branches on `model_type`."""

from compress.architectures.decoder import DECODERS, DecoderMap, ScaleMapping, decoder_map

__all__ = ["DECODERS", "DecoderMap", "ScaleMapping", "decoder_map"]
