"""One module per `sinf` subcommand; each defines NAME, HELP, add_arguments(parser) and run(args)."""

COMMAND_MODULES = [
    "train",
    "eval",
    "scores",
    "subgraph",
    "build",
    "compare",
    "bench",
]
