"""Export-time rewrites of a FAN model: same arithmetic, a cheaper ONNX graph.

The dynamo exporter writes what the PyTorch code says, and some of what eager PyTorch
does for free costs a copy in ONNX Runtime. Each rewrite below changes only how a
result is computed, never what (the export's parity check and the all-variants test
guard them), and each can be switched off for the benchmark's ablation:

* **positional encoding folded**: FAN's Fourier encoding depends only on the token
  grid, fixed for the export size (only the batch is dynamic), so it becomes one
  constant instead of a chain of arange/sin/cos/conv nodes and a per-batch `Tile`.
* **channel attention with the token axis last**: its two softmaxes run over the
  token axis of a [B, N, heads, d] tensor, which ONNX Runtime executes as
  transpose + softmax + transpose; on the [B, C, N] layout the axis is last, and the
  queries come out in that layout directly from one matmul with the transposed input.
* **layer scales folded**: each block's three per-channel scales ride on weights that
  already precede them (`FANBlock.fold_layer_scales`), removing three elementwise
  multiplies over every token per block.
* **attention as one ONNX `Attention` node** (opset 23 and newer): the token mixing's
  queries, keys and values stay [B, N, C] and the node splits heads itself, instead of
  reshape/transpose chains around two matmuls and a softmax. TensorRT parses the op
  from 10.14 on; `--opset 20` keeps the decomposed form for older TensorRT.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from stl_bench.errors import StlBenchError
from stl_bench.fan.model import ChannelProcessing, FANBlock, TokenMixing, TokenPairForward

log = logging.getLogger(__name__)

ATTENTION_OPSET = 23  # the first opset with a standard `Attention` operator


@dataclass
class GraphOptions:
    """Which rewrites to apply (all on by default; see the module docstring)."""

    fold_positional_encoding: bool = True
    reorder_channel_attention: bool = True
    fold_layer_scales: bool = True
    attention_op: bool = True

    @classmethod
    def none(cls) -> "GraphOptions":
        """The plain export: the model's own code, as PyTorch runs it."""
        return cls(False, False, False, False)


# --------------------------------------------------------------------------- attention op
@torch.library.custom_op("stl_bench::token_attention", mutates_args=())
def token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Multi-head attention on [B, N, C] queries/keys/values (heads split inside).

    A custom op so that the exporter sees one call it can translate into one ONNX
    `Attention` node; in PyTorch it is the same fused attention the model uses.
    """
    b, n, c = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, t.shape[1], num_heads, c // num_heads).transpose(1, 2)

    return F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(b, n, c)


@token_attention.register_fake
def _token_attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    return torch.empty_like(q)


def _token_attention_onnx(q: Any, k: Any, v: Any, num_heads: int) -> Any:
    from onnxscript import opset23 as op

    y, _, _, _ = op.Attention(q, k, v, q_num_heads=num_heads, kv_num_heads=num_heads)
    return y


def custom_translation_table() -> dict:
    """Translations the exporter needs for the rewrites' custom ops."""
    return {torch.ops.stl_bench.token_attention.default: _token_attention_onnx}


class _AttentionOpTokenMixing(nn.Module):
    """FAN's token mixing with separate q, k, v projections and one attention call.

    The official `kv` projection is split into `k` and `v` (its first C outputs are the
    keys), so no 5-D reshape/permute/split of a joint tensor is left in the graph.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        c = inner.q.in_features
        self.num_heads = inner.num_heads
        self.q = inner.q
        self.k = _slice_linear(inner.kv, 0, c)
        self.v = _slice_linear(inner.kv, c, 2 * c)
        self.proj = inner.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(token_attention(self.q(x), self.k(x), self.v(x), self.num_heads))


def _slice_linear(linear: nn.Linear, start: int, stop: int) -> nn.Linear:
    out = nn.Linear(linear.in_features, stop - start, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(linear.weight[start:stop])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[start:stop])
    return out


# --------------------------------------------------------------------------- channel attention
class _TokenLastChannelProcessing(nn.Module):
    """FAN's channel attention with both token softmaxes on the last axis.

    Same arithmetic as `stl_bench.fan.model.ChannelProcessing.forward`, reordered:
    with xt = x^T ([B, C, N]), the queries q^T = W xt come out in the layout whose
    token softmax is on the last axis (their bias, constant over tokens, cancels in it), the keys' softmax is taken on xt directly and
    averaged over each head's channels to [B, h, N, 1]; one transpose in all.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        m = self.inner
        b, n, c = x.shape
        heads = m.num_heads
        xt = x.transpose(1, 2)  # B, C, N
        # A query bias is constant over tokens, and the softmax over tokens ignores it.
        q = torch.matmul(m.q.weight, xt).reshape(b, heads, c // heads, n).softmax(-1)  # B, h, d, N
        k = xt.reshape(b, heads, c // heads, n).softmax(-1).mean(2).unsqueeze(-1)  # B, h, N, 1
        attn = torch.sigmoid(q @ k) * m.temperature  # B, h, d, 1
        v = m.norm_v(m.mlp_v(x, h, w))  # B, N, C
        return v * attn.reshape(b, 1, c)


# --------------------------------------------------------------------------- positional encoding
class _ConstantPositionalEncoding(nn.Module):
    """FAN's Fourier positional encoding evaluated once for a fixed token grid."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)  # [1, C, H, W]

    def forward(self, batch: int, h: int, w: int) -> torch.Tensor:
        if (h, w) != tuple(self.table.shape[2:]):
            raise ValueError(f"this export is for a {tuple(self.table.shape[2:])} token grid, not {(h, w)}")
        return self.table.expand(batch, -1, -1, -1)


# --------------------------------------------------------------------------- applying them
def _fold_positional_encoding(model: nn.Module, input_size: Sequence[int]) -> bool:
    from timm.models.xcit import PositionalEncodingFourier

    pos = getattr(model, "pos_embed", None)
    if not isinstance(pos, PositionalEncodingFourier) or not hasattr(model, "token_grid"):
        return False
    gh, gw = model.token_grid(tuple(input_size[-2:]))
    with torch.no_grad():
        model.pos_embed = _ConstantPositionalEncoding(pos(1, gh, gw).detach())
    return True


def _fan_blocks(model: nn.Module) -> list[nn.Module]:
    return [b for b in getattr(model, "blocks", []) if isinstance(b, FANBlock)]


def _reorder_channel_attention(model: nn.Module) -> int:
    blocks = [b for b in _fan_blocks(model) if isinstance(b.mlp, ChannelProcessing)]
    for block in blocks:
        block.mlp = _TokenLastChannelProcessing(block.mlp)
    return len(blocks)


def _use_attention_op(model: nn.Module) -> int:
    blocks = [b for b in _fan_blocks(model) if isinstance(b.attn, TokenMixing)]
    for block in blocks:
        block.attn = _AttentionOpTokenMixing(block.attn)
    return len(blocks)


class ExportHeads(nn.Module):
    """The graph's outputs: `logits`, plus `token_logits` for a token export.

    Class logits are always the plain class head (the model's own `forward`): the fused
    STL score is computed by the runner from both outputs, so every backend fuses the
    same way. A token export traces `TokenPairForward`, the model's (class, token) pair.
    """

    def __init__(self, model: nn.Module, tokens: bool) -> None:
        super().__init__()
        self.model = model
        self.tokens = tokens
        # Not a registered submodule: the graph's initializers keep the names `model.*`
        # (a second path to the same parameters would rename them `pair.model.*`).
        self._pair = (TokenPairForward(model),) if tokens else ()

    def forward(self, x: torch.Tensor) -> Any:
        if self._pair:
            return self._pair[0](x)
        return self.model(x)


def prepare_for_export(model: nn.Module, input_size: Sequence[int], tokens: bool,
                       options: GraphOptions | None = None, opset: int = ATTENTION_OPSET) -> nn.Module:
    """A copy of `model` in eval mode with the rewrites applied and the heads chosen.

    The attention rewrite needs `opset` >= 23 and is skipped below it.
    """
    options = options or GraphOptions()
    if tokens and not getattr(model, "has_token_head", False):
        raise StlBenchError(
            f"--tokens needs a token-label model (a `*_token` variant); "
            f"{getattr(model, 'default_cfg', {}).get('architecture', type(model).__name__)} has no token head"
        )
    model = copy.deepcopy(model).eval().float()
    done = []
    if options.fold_positional_encoding and _fold_positional_encoding(model, input_size):
        done.append("positional encoding folded")
    if options.fold_layer_scales:
        for block in _fan_blocks(model):
            block.fold_layer_scales()
        done.append("layer scales folded")
    if options.reorder_channel_attention:
        done.append(f"channel attention token-last in {_reorder_channel_attention(model)} blocks")
    if options.attention_op and opset >= ATTENTION_OPSET:
        done.append(f"Attention op in {_use_attention_op(model)} blocks")
    log.debug("export rewrites for %s: %s", tuple(input_size), ", ".join(done) or "none")
    return ExportHeads(model, tokens).eval()
