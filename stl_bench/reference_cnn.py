"""Moved to `stl_bench.fan.reference_cnn`; this stand-in lives only until `stl_bench/__init__.py`
stops importing it (its line `from stl_bench import reference_cnn ...` goes: `stl_bench.fan` registers
`alexnet_mini_32` now). Delete this file with that line."""
from stl_bench.fan.reference_cnn import AlexNetMini, alexnet_mini_32  # noqa: F401
