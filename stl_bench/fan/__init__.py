"""The FAN family (ViT and ConvNeXt-hybrid stems) with STL token-label heads, in timm's registry."""
from stl_bench.fan.checkpoint import CheckpointInfo, file_sha256, load_checkpoint, read_checkpoint
from stl_bench.fan.factory import check_model_name, create_model, create_model_from_checkpoint
from stl_bench.fan.model import FAN, FAN_MODEL_NAMES, OUTPUT_MODES, checkpoint_filter_fn, model_args

__all__ = [
    "FAN", "FAN_MODEL_NAMES", "OUTPUT_MODES", "CheckpointInfo", "check_model_name", "checkpoint_filter_fn",
    "create_model", "create_model_from_checkpoint", "file_sha256", "load_checkpoint", "model_args", "read_checkpoint",
]
