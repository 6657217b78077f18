"""One module per `sinf` subcommand; each defines NAME, HELP, add_arguments(parser) and run(args)."""

COMMAND_MODULES = [
    "models",
    "train",
    "eval",
    "stats",
    "clusters",
    "overlap",
    "scores",
    "subgraph",
    "build",
    "compare",
    "bench",
    "publish",
    "report",
    "export",
]
