"""The FAN model family and the small reference CNN that normalises the digits benchmark.

`model` holds FAN (ViT and ConvNeXt-hybrid stems, STL token-label heads) and registers
every variant in timm; `reference_cnn` registers `alexnet_mini_32`, which plays
AlexNet's part in the mCE of data sets without a published AlexNet row. Importing this
package registers both, so `timm.create_model(name)` knows every name afterwards.
`checkpoint`, `factory` and `cards` read files and build models by name.
"""
from stl_bench.fan import reference_cnn as _reference_cnn  # noqa: F401  (registers alexnet_mini_32)
from stl_bench.fan.checkpoint import CheckpointInfo, file_sha256, load_checkpoint, read_checkpoint
from stl_bench.fan.factory import check_model_name, create_model, create_model_from_checkpoint
from stl_bench.fan.model import FAN, FAN_MODEL_NAMES, OUTPUT_MODES, TokenPairForward, checkpoint_filter_fn

__all__ = [
    "FAN", "FAN_MODEL_NAMES", "OUTPUT_MODES", "CheckpointInfo", "TokenPairForward", "check_model_name",
    "checkpoint_filter_fn", "create_model", "create_model_from_checkpoint", "file_sha256", "load_checkpoint",
    "read_checkpoint",
]
