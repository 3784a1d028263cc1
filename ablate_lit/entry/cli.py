"""``python -m ablate_lit test --config configs/demo.yaml``: a LightningCLI with one subcommand, test
(``entry.lightning_cli``), beside the report, export and cache subcommands."""

from __future__ import annotations

import logging
import os
import sys

from ablate_lit.common import progress
from ablate_lit.common.errors import AblateError, clear_raised, first_raised
from ablate_lit.common.logs import quiet_loading
from ablate_lit.common.signals import stopped_by_signals
from ablate_lit.entry.parse_errors import condense, config_error, instantiation_error

USAGE = """\
usage: python -m ablate_lit {test,report,export,cache} ...     (or: ablate-lit {test,report,export,cache} ...)

Ablate the neurons of a transformer's attention heads (or its MLP units, or whole heads) and measure
how much it degrades (Top1, cross-entropy, KL) with each replacement value: zero, mean, median, peak,
optimal, resampled.

subcommands:
  test     run an experiment: calibrate, then evaluate every method at every fraction and seed;
           resumable, results in lightning_logs/<run>/ (python -m ablate_lit test --config configs/demo.yaml)
  report   merge finished runs into the paper's Table 2, its figures and paired differences
  export   save one point of a run as a model (its constants folded into the out-projections)
  cache    list or clear what ablate_lit caches on disk (converted GGUF models, calibration statistics)

'python -m ablate_lit <subcommand> --help' lists a subcommand's options. From Python: ablate_lit.run(...).
"""


def main(args=None) -> None:
    """``test`` (LightningCLI), ``report`` (tables and figures from finished runs) or ``cache``. Each
    imports what it needs when it needs it: help, ``report`` and ``cache`` never load transformers,
    and torch and Lightning only where they read a run's files."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    clear_raised()
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return None
    from jsonargparse import ArgumentError
    from omegaconf.errors import OmegaConfBaseException

    # Lightning logs each SIGTERM at INFO; the run's own one line says it (ablate_lit.common.signals)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    try:
        with stopped_by_signals(lambda: "no evaluation had started"):
            if argv[:1] == ["cache"]:
                from ablate_lit.entry.cache_command import main as cache_main

                return cache_main(argv[1:])
            if argv[:1] == ["report"]:
                from ablate_lit.entry.report_command import main as report_main

                return report_main(argv[1:])
            if argv[:1] == ["export"]:
                from ablate_lit.entry.export_command import main as export_main

                return export_main(argv[1:])
            quiet_loading()  # (imports transformers and datasets to quiet them)
            progress.start()
            from ablate_lit.entry.lightning_cli import build_cli

            build_cli(args)
    except AblateError as exc:
        _fail(exc)
    except ArgumentError as exc:  # jsonargparse's report of a bad option or value
        _fail(first_raised() or AblateError(condense(str(exc))))
    except OmegaConfBaseException as exc:  # a ${...} in the config that cannot be resolved
        _fail(first_raised() or AblateError(config_error(exc)))
    except (ValueError, TypeError) as exc:
        original = first_raised()
        built = instantiation_error(str(exc)) if original is None else None
        if original is None and built is None:
            raise
        _fail(original or AblateError(built))


def _fail(exc: AblateError) -> None:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(exc.exit_code)
