"""FAN: Fully Attentional Networks, with the token-label heads of STL.

Papers: *Understanding the Robustness in Vision Transformers* (Zhou et al., ICML 2022)
and *Fully Attentional Networks with Self-emerging Token Labeling* (Zhao et al., ICCV 2023).

Written for current timm, with exactly the official state_dict keys and shapes
(NVlabs/FAN and NVlabs/STL `models/fan.py`), so official checkpoints load with
`strict=True` and give the same outputs. What changed against the official code:

* One model class serves plain and token-label variants; the official code keeps two
  near-identical files that differ in what `forward` returns. Here `forward` always
  returns one tensor: the class logits, or for a token model made with
  `output="fused"` (or switched by `set_output("fused")`) the official evaluation head,
  class logits + 0.5 x the per-class max over tokens. The (class, token) pair that the
  official `*_token` models return from `forward` comes from `forward_tokens`, and
  through `forward` from the `TokenPairForward` wrapper, which training (DDP sees every
  parameter) and export (two graph outputs) use: volo's `forward_train` split, so no
  method changes its return type with a mode.
* The SE-MLP variant (`fan_small_12_p16_224_se_attn`) runs: the official block's
  forward takes H and W but the model never passes them.
* The class-attention blocks and Fourier positional encoding are timm's XCiT ones, which
  match the official modules key for key; the hybrid stem is built from timm's
  ConvNeXt stages.
* The channel attention averages keys with `mean(-1)` instead of
  `adaptive_avg_pool2d(..., (N, 1))`: the same numbers, and it exports to ONNX with a
  dynamic batch.
* The hybrid stem's stage norms use the unbiased channel variance whatever the memory
  format (`UnbiasedLayerNorm2d`), which is what the official stem computes on the
  layout it was trained with; see that class for the timm 0.5.4 quirk behind it.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, to_2tuple, trunc_normal_, use_fused_attn
from timm.models import (DefaultCfg, PretrainedCfg, build_model_with_cfg, load_pretrained, model_entrypoint,
                         register_model)
from timm.models.convnext import ConvNeXtStage
from timm.models.xcit import ClassAttentionBlock, PositionalEncodingFourier

from stl_bench.errors import StlBenchError
from stl_bench.fan.cards import card_for_tag, load_cards, pretrained_tag
from stl_bench.fan.checkpoint import read_checkpoint
from stl_bench.fan.hub import fetch

__all__ = ["FAN", "FAN_MODEL_NAMES", "OUTPUT_MODES", "TokenPairForward", "checkpoint_filter_fn", "fuse_token_head",
           "refresh_pretrained_tags"]

_log = logging.getLogger(__name__)
OUTPUT_MODES = ("cls", "fused")
OutputMode = Literal["cls", "fused"]
TOKEN_FUSION_WEIGHT = 0.5  # the official evaluation head: cls + 0.5 * max over tokens


def fuse_token_head(cls_logits: torch.Tensor, token_logits: torch.Tensor,
                    weight: float = TOKEN_FUSION_WEIGHT) -> torch.Tensor:
    """The official STL evaluation score: class logits [B, C] + weight x per-class max over tokens [B, N, C].

    The one place the fused head is computed: the model's "fused" output, the runners
    (which fuse the two outputs of an exported graph), the trainer's validation and the
    benchmarks all call it.
    """
    return cls_logits + weight * token_logits.max(dim=1).values


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)


def _init_conv_fan_out(m: nn.Module) -> None:
    _init_linear(m)
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.data.zero_()


def _conv3x3_bn(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False), nn.BatchNorm2d(out_chs))


class ConvPatchEmbed(nn.Module):
    """A stack of stride-2 3x3 conv + BN layers (ViT variants' stem, as in XCiT).

    Patch 16 and 8 are XCiT's; patch 4 (two convs) is FAN's own and serves the tiny
    32-pixel variant, whose 8x8 token grid matches an 8x8 digits image pixel for pixel.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        img_size = to_2tuple(img_size)
        widths = {16: [8, 4, 2, 1], 8: [4, 2, 1], 4: [4, 1]}.get(patch_size)
        if widths is None:
            raise ValueError(f"ConvPatchEmbed supports patch sizes 4, 8 and 16, not {patch_size}")
        layers: list[nn.Module] = []
        prev = in_chans
        for i, div in enumerate(widths):
            if i:
                layers.append(act_layer())
            layers.append(_conv3x3_bn(prev, embed_dim // div, 2))
            prev = embed_dim // div
        self.proj = nn.Sequential(*layers)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        hp, wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (hp, wp)


class UnbiasedLayerNorm2d(LayerNorm2d):
    """Channel LayerNorm with the unbiased (n - 1) variance, as the released hybrids were trained.

    The official hybrid stem copies timm 0.5.4's `LayerNorm2d`, which calls
    `F.layer_norm` (biased variance) only for a contiguous input and otherwise
    `torch.var_mean` (unbiased). Its stem norm returns a channels-last-strided tensor,
    convolutions keep that layout, so every later norm of the stem (block norms, the
    stage-1 downsample norm) took the unbiased branch in training, on CPU and GPU alike
    (fixed in timm the day after 0.5.4, upstream issue #1090). Here that variance is
    computed whatever the input layout, so channels-last never changes a result.

    With var_u = var_b * C / (C - 1), `(x - mu) / sqrt(var_u + eps)` equals
    `sqrt((C - 1) / C) * (x - mu) / sqrt(var_b + eps * (C - 1) / C)`: one `F.layer_norm`
    with a rescaled eps and weight, so the fast kernel and ONNX's LayerNormalization
    op still apply (the exported graph carries the rescaled eps; tests read it).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        ratio = (c - 1) / c
        x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC view: normalise over channels
        x = F.layer_norm(x, self.normalized_shape, self.weight * math.sqrt(ratio), self.bias, self.eps * ratio)
        return x.permute(0, 3, 1, 2)


class ConvNeXtStem(nn.Module):
    """The first stages of a ConvNeXt (stride 4 stem, then stride-2 stages).

    Keys match the official hybrid backbone (`stem.0`, `stem.1`, `stages.N.*`); its
    layer scale starts at 1e-6 and it has no drop path, as in the official hybrids.
    The stem norm is biased and every stage norm unbiased (`UnbiasedLayerNorm2d`), as
    the official stem computes them on a contiguous NCHW input.
    """

    def __init__(self, in_chans: int = 3, depths: tuple[int, ...] = (3, 3),
                 dims: tuple[int, ...] = (128, 256, 512, 1024)) -> None:
        super().__init__()
        stage_norm = partial(UnbiasedLayerNorm2d, eps=1e-6)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        stages = []
        prev = dims[0]
        for i, depth in enumerate(depths):
            stages.append(ConvNeXtStage(
                prev, dims[i], stride=2 if i > 0 else 1, depth=depth, ls_init_value=1e-6,
                conv_mlp=True, norm_layer=stage_norm))
            prev = dims[i]
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.reduction = 4 * 2 ** (len(depths) - 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridEmbed(nn.Module):
    """ConvNeXt stem, then a 2x2 stride-2 conv to stride 16 (14x14 tokens at 224)."""

    def __init__(self, img_size: int = 224, in_chans: int = 3, embed_dim: int = 384,
                 depths: tuple[int, ...] = (3, 3), dims: tuple[int, ...] = (128, 256, 512, 1024),
                 patch_size: int = 2) -> None:
        super().__init__()
        img_size = to_2tuple(img_size)
        self.backbone = ConvNeXtStem(in_chans, depths, dims)
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=patch_size, stride=patch_size)
        stride = self.backbone.reduction * patch_size
        self.patch_size = (stride, stride)
        self.grid_size = (img_size[0] // stride, img_size[1] // stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(self.backbone(x))
        hp, wp = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), (hp, wp)


class DWConv(nn.Module):
    """Depth-wise 3x3 conv, GELU, BN, depth-wise 3x3 conv on the token grid.

    This GELU is the channel-processing MLP's only nonlinearity.
    """

    def __init__(self, dim: int, act_layer: type[nn.Module] = nn.GELU, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=pad, groups=dim)
        self.act = act_layer()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=pad, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        # Token-major to NCHW through a 4-D permute (the same view as transpose +
        # reshape): ONNX Runtime folds a [0, 3, 1, 2] permute into its blocked-layout
        # reorder, where a 3-D transpose costs a full copy each way.
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.permute(0, 2, 3, 1).reshape(b, n, c)


class ConvMlp(nn.Module):
    """FAN's MLP: fc1, a gated depth-wise conv branch added back, fc2.

    The official module builds `act` and never applies it; it is kept (it holds no
    weights) so that the module reads like the official one.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.gamma = nn.Parameter(torch.ones(hidden_features))
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)
        self.apply(_init_conv_fan_out)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        y = self.dwconv(x, h, w)
        x = self.drop(y if self.gamma is None else self.gamma * y) + x
        return self.drop(self.fc2(x))


class SqueezeExcite(nn.Module):
    """Channel squeeze-excite on the token grid (ReLU, sigmoid gate), FAN's SE-MLP."""

    def __init__(self, channels: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        reduced = max(1, int(channels * se_ratio + 0.5))
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * s.sigmoid()


class SEMlp(ConvMlp):
    """ConvMlp followed by squeeze-excite over the token grid."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__(in_features, hidden_features, out_features, act_layer, drop)
        self.se = SqueezeExcite(out_features or in_features)
        self.se.apply(_init_conv_fan_out)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = super().forward(x, h, w)
        b, n, c = x.shape
        x = self.se(x.reshape(b, h, w, c).permute(0, 3, 1, 2))
        return x.permute(0, 2, 3, 1).reshape(b, n, c)


class TokenMixing(nn.Module):
    """Multi-head self-attention with separate `q` and `kv` projections (official keys)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.apply(_init_conv_fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class ChannelProcessing(nn.Module):
    """FAN's channel attention: an attention over channels, applied to an MLP of the tokens.

    Per head, queries (softmax over tokens) meet the token-averaged keys (softmax over
    tokens) to give one sigmoid weight per channel, scaled by a learned temperature; the
    values are `norm_v(mlp_v(x))`. Note `norm_v` is a default-eps LayerNorm (1e-5), not
    the model's 1e-6 one: the official block does not pass its norm layer down.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 mlp_hidden_dim: int | None = None, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = ConvMlp(dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop)
        self.norm_v = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.apply(_init_conv_fan_out)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        hd = c // self.num_heads
        q = self.q(x).reshape(b, n, self.num_heads, hd).transpose(1, 2)  # B, h, N, d
        k = x.reshape(b, n, self.num_heads, hd).transpose(1, 2)
        q = q.softmax(-2).transpose(-1, -2)  # B, h, d, N
        k = k.softmax(-2).mean(-1, keepdim=True)  # B, h, N, 1
        attn = torch.sigmoid(q @ k) * self.temperature  # B, h, d, 1: one weight per channel
        attn = self.attn_drop(attn)
        v = self.norm_v(self.mlp_v(x, h, w)).reshape(b, n, self.num_heads, hd)  # B, N, h, d
        return (v * attn.squeeze(-1).unsqueeze(1)).reshape(b, n, c)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"temperature"}


def _scaled(gamma: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if gamma is None else gamma * x


def _fold_scale_into(layer: nn.Module, gamma: torch.Tensor) -> None:
    """`gamma * layer(x)` == `layer'(x)` for a layer whose output channel c is an affine map."""
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(gamma.reshape(shape))
    if layer.bias is not None:
        layer.bias.mul_(gamma)


class FANBlock(nn.Module):
    """`x + gamma1 * TokenMixing(norm1(x))`, then `x + gamma2 * ChannelProcessing(norm2(x))`.

    With `se_mlp=True` the second half is the SE-MLP of `fan_small_12_p16_224_se_attn`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] = nn.LayerNorm,
                 eta: float = 1.0, se_mlp: bool = False) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = TokenMixing(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        hidden = int(dim * mlp_ratio)
        if se_mlp:
            self.mlp = SEMlp(dim, hidden_features=hidden, act_layer=act_layer, drop=proj_drop)
        else:
            self.mlp = ChannelProcessing(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                         mlp_hidden_dim=hidden, act_layer=act_layer, drop=proj_drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(_scaled(self.gamma1, self.attn(self.norm1(x))))
        return x + self.drop_path(_scaled(self.gamma2, self.mlp(self.norm2(x), h, w)))

    @torch.no_grad()
    def fold_layer_scales(self) -> None:
        """Multiply the per-channel layer scales into the maps that precede them.

        For inference graphs only (the ONNX export uses it): each scale is an
        elementwise multiply over every token, and each can ride on a per-channel
        weight that is already there: `gamma1` on the attention's output projection,
        `gamma2` on the channel attention's value LayerNorm (the attention weight that
        follows is elementwise), the MLP's `gamma` on the last depth-wise conv. The
        SE-MLP's `gamma2` stays: its squeeze-excite gate reads the unscaled output.
        """
        _fold_scale_into(self.attn.proj, self.gamma1)
        self.gamma1 = None
        mlp = self.mlp
        if isinstance(mlp, ChannelProcessing):
            _fold_scale_into(mlp.norm_v, self.gamma2)
            self.gamma2 = None
            mlp = mlp.mlp_v
        if mlp.gamma is not None:
            _fold_scale_into(mlp.dwconv.conv2, mlp.gamma)
            mlp.gamma = None


class FAN(nn.Module):
    """Fully Attentional Network; with `token_head=True`, the STL token-label model.

    `forward(x)` returns one tensor [B, C]: the class logits, or the fused head when
    `output` is "fused" (token models only). `forward_tokens(x)` returns
    `(cls_logits [B, C], token_logits [B, N, C])` with N patch tokens in row-major
    order (N = H/16 * W/16 for the 224-px variants); wrap the model in
    `TokenPairForward` where that pair must come out of `forward`.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        stem: Literal["conv", "hybrid"] = "conv",
        hybrid_depths: tuple[int, ...] = (3, 3),
        se_mlp: bool = False,
        cls_attn_layers: int = 2,
        eta: float = 1.0,
        tokens_norm: bool = True,
        head_init_scale: float = 1.0,
        token_head: bool = False,
        output: OutputMode = "cls",
        global_pool: str = "token",
    ) -> None:
        super().__init__()
        if global_pool != "token":
            raise ValueError("FAN classifies from its class token; global_pool must be 'token'")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.has_token_head = token_head
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        act_layer = nn.GELU

        if stem == "hybrid":
            self.patch_embed = HybridEmbed(img_size, in_chans, embed_dim, depths=tuple(hybrid_depths))
        else:
            self.patch_embed = ConvPatchEmbed(img_size, patch_size, in_chans, embed_dim, act_layer)
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        # The official FAN uses one drop-path rate in every block, not a linear ramp.
        self.blocks = nn.ModuleList([
            FANBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop_rate, attn_drop_rate, drop_path_rate,
                     act_layer, norm_layer, eta, se_mlp)
            for _ in range(depth)
        ])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_attn_blocks = nn.ModuleList([
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=proj_drop_rate,
                                attn_drop=attn_drop_rate, act_layer=act_layer, norm_layer=norm_layer, eta=eta,
                                tokens_norm=tokens_norm)
            for _ in range(cls_attn_layers)
        ])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if token_head:
            self.aux_head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.output: OutputMode = "cls"
        self.set_output(output)

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_linear)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    # --- timm API ------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=r"^blocks\.(\d+)" if coarse else [
                (r"^blocks\.(\d+)", None),
                (r"^cls_attn_blocks\.(\d+)", (99999,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New class count for both heads (a token model's `aux_head` must follow `head`)."""
        if global_pool not in (None, "token"):
            raise ValueError("FAN classifies from its class token; global_pool must be 'token'")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.has_token_head:
            self.aux_head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes == 0:
            self.output = "cls"

    def set_output(self, output: OutputMode) -> "FAN":
        """Choose what `forward` returns: "cls" (class logits) or "fused" (token models only).

        Both are one tensor [B, C]. The (class, token) pair is not a mode: it comes from
        `forward_tokens`, or through `forward` from `TokenPairForward(model)`.
        """
        if output == "pair":
            raise ValueError('output="pair" is gone: call forward_tokens(x), or wrap the model in '
                             "stl_bench.fan.model.TokenPairForward where forward must return the pair")
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, not {output!r}")
        if output != "cls" and not self.has_token_head:
            raise ValueError(f"output={output!r} needs a token-label model (a `*_token` variant)")
        self.output = output
        return self

    def token_grid(self, img_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """The patch-token grid (rows, cols) for an input size (default: the configured one)."""
        if img_size is None:
            return tuple(self.patch_embed.grid_size)
        h, w = to_2tuple(img_size)
        ph, pw = self.patch_embed.patch_size
        return h // ph, w // pw

    # --- forward -------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: [B, 1 + N, C], the class token first."""
        b = x.shape[0]
        x, (hp, wp) = self.patch_embed(x)
        x = x + self.pos_embed(b, hp, wp).reshape(b, -1, x.shape[1]).transpose(1, 2)
        x = self.pos_drop(x)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, hp, wp, use_reentrant=False)
            else:
                x = blk(x, hp, wp)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token features [B, C'] (`pre_logits`), class logits, or the fused head [B, C]."""
        cls = self.head_drop(x[:, 0])
        if pre_logits:
            return cls
        logits = self.head(cls)
        if self.output == "fused":
            return fuse_token_head(logits, self.aux_head(x[:, 1:]))
        return logits

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [B, C], per-patch token logits [B, N, C]), whatever `output` says.

        The training and export interface of a token model (`TokenPairForward` calls it).
        """
        if not self.has_token_head:
            raise ValueError("forward_tokens needs a token-label model (a `*_token` variant)")
        x = self.forward_features(x)
        return self.head(self.head_drop(x[:, 0])), self.aux_head(x[:, 1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def filter_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`checkpoint_filter_fn` for this model: how `fan.checkpoint` renames official layouts without importing FAN."""
        return checkpoint_filter_fn(state_dict, self)


class TokenPairForward(nn.Module):
    """`forward` = the wrapped token model's `forward_tokens`: (class logits, token logits).

    The model's own `forward` returns one tensor (volo's rule: one return type per
    method). Training needs the pair through `forward` so DistributedDataParallel's
    hooks see every parameter, and export needs it as the graph's two outputs: both wrap
    the model in this (it has no parameters of its own; `wrapper.model` is the model).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not getattr(model, "has_token_head", False):
            raise ValueError("TokenPairForward needs a token-label model (a `*_token` variant)")
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_tokens(x)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: FAN) -> dict[str, torch.Tensor]:
    """Map older official layouts to today's names.

    Older FAN files call the positional encoding `pos_embeder.*` and fuse the
    class-attention projections into one `qkv` tensor; timm's class attention keeps
    separate `q`, `k`, `v`.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        out[k.replace("pos_embeder.", "pos_embed.", 1) if k.startswith("pos_embeder.") else k] = v
    for i in range(len(model.cls_attn_blocks)):
        prefix = f"cls_attn_blocks.{i}.attn."
        for kind in ("weight", "bias"):
            fused = out.pop(prefix + f"qkv.{kind}", None)
            if fused is None:
                continue
            for j, part in enumerate(fused.reshape(3, -1, *fused.shape[1:]).unbind(0)):
                out[prefix + f"{'qkv'[j]}.{kind}"] = part
    return out


def _create_fan(variant: str, pretrained: bool = False, **kwargs) -> FAN:
    """Build a variant; `pretrained=True` loads its tag's weights (a model card's release, fetched once).

    The model is built without weights and then loaded through timm's `load_pretrained`
    (class-count and input-channel adaptation, `checkpoint_filter_fn`, strict keys), from
    a state dict read by our strict reader (`read_checkpoint`): the official files nest
    their weights under `state_dict` next to a pickled `argparse.Namespace`, which
    timm's own URL loader would not unpack.
    """
    cache_dir = kwargs.pop("cache_dir", None)
    strict = kwargs.get("pretrained_strict", True)
    model = build_model_with_cfg(FAN, variant, False, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
    if pretrained:
        _load_pretrained(model, cache_dir, strict, kwargs.get("in_chans", 3))
    return model


def _load_pretrained(model: FAN, cache_dir: str | None, strict: bool, in_chans: int) -> None:
    cfg = dict(model.pretrained_cfg)
    path = cfg.get("file")
    if not path and not cfg.get("state_dict") and cfg.get("url"):
        card = card_for_tag(cfg["architecture"], cfg.get("tag"))
        if card is not None and card["url"] == cfg["url"]:
            path = fetch(card, cache=cache_dir)
    if path:
        cfg["state_dict"], _ = read_checkpoint(path)
    load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, in_chans=in_chans,
                    filter_fn=checkpoint_filter_fn, strict=strict)


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0.0", "classifier": "head",
        "license": "NVIDIA Source Code License-NC (official weights)",
        **kwargs,
    }


_HYBRID = dict(first_conv="patch_embed.backbone.stem.0")
_TOKEN = dict(classifier=("head", "aux_head"))
_NANO = dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear", license="")

# The untrained config of every variant, plain and `_token` twin alternating.
_ARCH_CFGS: dict[str, dict] = {
    "fan_tiny_12_p16_224": _cfg(),
    "fan_tiny_12_p16_224_token": _cfg(**_TOKEN),
    "fan_small_12_p16_224_se_attn": _cfg(),
    "fan_small_12_p16_224_se_attn_token": _cfg(**_TOKEN),
    "fan_small_12_p16_224": _cfg(),
    "fan_small_12_p16_224_token": _cfg(**_TOKEN),
    "fan_base_18_p16_224": _cfg(),
    "fan_base_18_p16_224_token": _cfg(**_TOKEN),
    "fan_large_24_p16_224": _cfg(),
    "fan_large_24_p16_224_token": _cfg(**_TOKEN),
    "fan_tiny_8_p4_hybrid": _cfg(**_HYBRID),
    "fan_tiny_8_p4_hybrid_token": _cfg(**_HYBRID, **_TOKEN),
    "fan_small_12_p4_hybrid": _cfg(**_HYBRID),
    "fan_small_12_p4_hybrid_token": _cfg(**_HYBRID, **_TOKEN),
    "fan_base_16_p4_hybrid": _cfg(**_HYBRID),
    "fan_base_16_p4_hybrid_token": _cfg(**_HYBRID, **_TOKEN),
    "fan_large_16_p4_hybrid": _cfg(**_HYBRID),
    "fan_large_16_p4_hybrid_token": _cfg(**_HYBRID, **_TOKEN),
    "fan_nano_4_p4_32": _cfg(**_NANO),
    "fan_nano_4_p4_32_token": _cfg(**_NANO, **_TOKEN),
}
_DATA_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes")


def _card_cfg(card: dict, untrained: dict) -> dict:
    """A model card as a timm pretrained config: its weights' URL and the data config it was trained with."""
    return {
        **untrained,
        "url": str(card["url"]),
        "input_size": tuple(int(v) for v in card["input_size"]),
        "crop_pct": float(card.get("crop_pct", untrained["crop_pct"])),
        "interpolation": str(card.get("interpolation", untrained["interpolation"])),
        "mean": tuple(float(v) for v in card.get("mean", untrained["mean"])),
        "std": tuple(float(v) for v in card.get("std", untrained["std"])),
        "num_classes": int(card.get("num_classes", untrained["num_classes"])),
        "license": str(card.get("license", "")),
        "description": str(card.get("title", card["name"])),
        "notes": (f"model card {card['name']}",),
    }


def _released_cfgs(arch: str, untrained: dict, cards: list[dict]) -> list[tuple[str, dict, bool]]:
    """(tag, config, keeps the untrained data config) for each card of `arch`, best first.

    "Best" is the highest reported ImageNet-1K top-1 among the cards whose data config
    equals the untrained one; `_pretrained_cfgs` makes the first of them the default.
    """
    tagged: dict[str, tuple[dict, bool, float]] = {}
    for card in cards:
        try:
            tag, cfg = pretrained_tag(card), _card_cfg(card, untrained)
        except (StlBenchError, KeyError, TypeError, ValueError) as exc:
            _log.warning("model card %s gives no timm pretrained tag: %s", card.get("name"), exc)
            continue
        if tag in tagged:
            _log.warning("model card %s names %s.%s again; only the first card is registered in timm",
                         card["name"], arch, tag)
            continue
        same_data = all(cfg[k] == untrained[k] for k in _DATA_FIELDS)
        tagged[tag] = cfg, same_data, float(card["reported"].get("in1k_top1") or 0.0)
    ordered = sorted(tagged.items(), key=lambda item: (not item[1][1], -item[1][2]))
    return [(tag, cfg, same) for tag, (cfg, same, _) in ordered]


def _default_cfgs(cards: dict[str, dict]) -> dict[str, DefaultCfg]:
    """Each architecture's tags, in `_ARCH_CFGS` order: its released cards (best first) and `untrained`.

    timm makes an architecture's first tag its default, the config `create_model(arch)`
    gets: here the best released card whose data config equals the untrained one, so
    building by name without weights keeps its input size, crop and normalisation. Where
    no card keeps it (or there is no card), `untrained` stays first. (timm's
    `generate_default_cfgs` would put the first tag with weights ahead of it, so the
    order is built here.)
    """
    out: dict[str, DefaultCfg] = {}
    for arch, untrained in _ARCH_CFGS.items():
        released = _released_cfgs(arch, untrained, [c for c in cards.values() if c.get("arch") == arch])
        tags = [(tag, cfg) for tag, cfg, _ in released]
        tags.insert(len(tags) if released and released[0][2] else 0, ("untrained", untrained))
        out[arch] = DefaultCfg(tags=deque(tag for tag, _ in tags),
                               cfgs={tag: PretrainedCfg(**cfg) for tag, cfg in tags}, is_pretrained=bool(released))
    return out


def _load_cards_quietly() -> dict[str, dict]:
    """The model cards, or none with a warning: a broken card folder must not break `import stl_bench`."""
    try:
        return load_cards()
    except (StlBenchError, OSError) as exc:
        _log.warning("no timm pretrained tags from the model cards: %s", exc)
        return {}


default_cfgs = _default_cfgs(_load_cards_quietly())


def refresh_pretrained_tags() -> list[str]:
    """Register the tags of the model cards as they are now; returns the architectures whose tags changed.

    Import registers the cards of `cards_dir()` at that moment; call this after pointing
    `$STL_BENCH_MODELS_DIR` at another folder. Re-registering an entrypoint is timm's
    own way to replace its configs (its "overwriting" warning is expected here).
    """
    global default_cfgs
    fresh = _default_cfgs(_load_cards_quietly())
    changed = [arch for arch in fresh if fresh[arch] != default_cfgs.get(arch)]
    default_cfgs = fresh
    for arch in changed:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            register_model(model_entrypoint(arch))
    return changed

# Every registered name, plain and `_token` twin alternating (the order `stl-bench models --all` lists).
FAN_MODEL_NAMES: tuple[str, ...] = tuple(default_cfgs)



@register_model
def fan_tiny_12_p16_224(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-T-ViT (7.3M)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=4)
    return _create_fan("fan_tiny_12_p16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_tiny_12_p16_224_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_tiny_12_p16_224` with the STL token-label head (`aux_head`)."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=4, token_head=True)
    return _create_fan("fan_tiny_12_p16_224_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_small_12_p16_224_se_attn(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-S-ViT with the SE-MLP in place of channel attention."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=8, se_mlp=True)
    return _create_fan("fan_small_12_p16_224_se_attn", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_small_12_p16_224_se_attn_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_small_12_p16_224_se_attn` with the STL token-label head (`aux_head`)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=8, se_mlp=True, token_head=True)
    return _create_fan("fan_small_12_p16_224_se_attn_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_small_12_p16_224(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-S-ViT (28.0M)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=8)
    return _create_fan("fan_small_12_p16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_small_12_p16_224_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_small_12_p16_224` with the STL token-label head (`aux_head`)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=8, token_head=True)
    return _create_fan("fan_small_12_p16_224_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_base_18_p16_224(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-B-ViT (54.0M)."""
    model_args = dict(patch_size=16, embed_dim=448, depth=18, num_heads=8)
    return _create_fan("fan_base_18_p16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_base_18_p16_224_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_base_18_p16_224` with the STL token-label head (`aux_head`)."""
    model_args = dict(patch_size=16, embed_dim=448, depth=18, num_heads=8, token_head=True)
    return _create_fan("fan_base_18_p16_224_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_large_24_p16_224(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-L-ViT (80.5M)."""
    model_args = dict(patch_size=16, embed_dim=480, depth=24, num_heads=10)
    return _create_fan("fan_large_24_p16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_large_24_p16_224_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_large_24_p16_224` with the STL token-label head (`aux_head`)."""
    model_args = dict(patch_size=16, embed_dim=480, depth=24, num_heads=10, token_head=True)
    return _create_fan("fan_large_24_p16_224_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_tiny_8_p4_hybrid(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-T-Hybrid (7.4M)."""
    model_args = dict(stem="hybrid", embed_dim=192, depth=8, num_heads=8)
    return _create_fan("fan_tiny_8_p4_hybrid", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_tiny_8_p4_hybrid_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_tiny_8_p4_hybrid` with the STL token-label head (`aux_head`)."""
    model_args = dict(stem="hybrid", embed_dim=192, depth=8, num_heads=8, token_head=True)
    return _create_fan("fan_tiny_8_p4_hybrid_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_small_12_p4_hybrid(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-S-Hybrid (26.3M); "12" in the name, 10 blocks, as in the official code."""
    model_args = dict(stem="hybrid", embed_dim=384, depth=10, num_heads=8)
    return _create_fan("fan_small_12_p4_hybrid", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_small_12_p4_hybrid_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_small_12_p4_hybrid` with the STL token-label head (`aux_head`)."""
    model_args = dict(stem="hybrid", embed_dim=384, depth=10, num_heads=8, token_head=True)
    return _create_fan("fan_small_12_p4_hybrid_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_base_16_p4_hybrid(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-B-Hybrid (50.4M)."""
    model_args = dict(stem="hybrid", embed_dim=448, depth=16, num_heads=8)
    return _create_fan("fan_base_16_p4_hybrid", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_base_16_p4_hybrid_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_base_16_p4_hybrid` with the STL token-label head (`aux_head`)."""
    model_args = dict(stem="hybrid", embed_dim=448, depth=16, num_heads=8, token_head=True)
    return _create_fan("fan_base_16_p4_hybrid_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_large_16_p4_hybrid(pretrained: bool = False, **kwargs) -> FAN:
    """FAN-L-Hybrid (76.8M); "16" in the name, 22 blocks, as in the official code.

    Only this plain model shrinks its head at init (its official token twin does not).
    """
    model_args = dict(stem="hybrid", embed_dim=480, depth=22, num_heads=10, hybrid_depths=(3, 5),
                      head_init_scale=0.001)
    return _create_fan("fan_large_16_p4_hybrid", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_large_16_p4_hybrid_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_large_16_p4_hybrid` with the STL token-label head (`aux_head`)."""
    model_args = dict(stem="hybrid", embed_dim=480, depth=22, num_heads=10, hybrid_depths=(3, 5),
                      token_head=True)
    return _create_fan("fan_large_16_p4_hybrid_token", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_nano_4_p4_32(pretrained: bool = False, **kwargs) -> FAN:
    """The CPU variant of the demo, the tests and the app: 32-px input, 8x8 tokens."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=4)
    return _create_fan("fan_nano_4_p4_32", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def fan_nano_4_p4_32_token(pretrained: bool = False, **kwargs) -> FAN:
    """`fan_nano_4_p4_32` with the STL token-label head (`aux_head`)."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=4, token_head=True)
    return _create_fan("fan_nano_4_p4_32_token", pretrained=pretrained, **dict(model_args, **kwargs))
