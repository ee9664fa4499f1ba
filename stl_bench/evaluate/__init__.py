"""Robustness evaluation: IN-1K, IN-A, IN-R, IN-C and plain folder suites over one loop.

`suites` says what a suite's files and classes are, `loop` runs a `Runner` over them
(sharded under torchrun), `results` keeps every finished (suite, corruption, severity)
cell on disk so a killed run resumes, `metrics` turns integer counts into accuracy,
ECE, CE and mCE, and `leaderboard` / `figures` write what people compare.
"""
