"""Where a user comes in: the command line (``cli``, ``lightning_cli``), ``ablate_lit.run`` (``api``),
``Results`` (``results``), and the report, export and cache commands."""
