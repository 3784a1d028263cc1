"""``python -m ablate_lit``: the command line (``entry.cli``)."""

from ablate_lit.entry.cli import main

if __name__ == "__main__":
    main()
