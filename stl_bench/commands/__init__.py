"""One module per `stl-bench` sub-command.

Each defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`: it parses
its flags and calls the library, and imports heavy packages inside `run` so that
`stl-bench --help` starts fast. A command is listed by name in `stl_bench.cli.COMMANDS`;
other modules here (shared flag helpers) are not commands.
"""
