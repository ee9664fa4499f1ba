"""One module per `stl-bench` sub-command.

Each module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`, and
imports heavy packages inside `run` so that `stl-bench --help` starts fast. The CLI
discovers the modules here; adding a command is adding a file.
"""
