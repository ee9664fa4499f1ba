"""Self-emerging Token Labeling: the stage objectives and token-label generation.

`objectives` holds the per-stage losses the one training loop plugs in; `gumbel` turns a
labeler's token logits (or stored top-k probabilities) into per-token targets.
"""
