"""jsonargparse's parse errors (a usage block plus a nested report of every Union member it tried),
condensed into the one line ablate_lit gives for every bad input: the option, the value, what it
should be, and where to look."""

from __future__ import annotations

import re

from ablate_lit.common.errors import closest
from ablate_lit.common.families import class_paths

HELP = "see python -m ablate_lit test --help"
_KINDS = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "text",
    "list": "a list in brackets, e.g. [zero,mean] or [0,1,2]",
    "dict": "a mapping",
}


LOGGERS = ("TensorBoardLogger", "WandbLogger", "MLFlowLogger", "CSVLogger", "CometLogger", "NeptuneLogger")
"""Lightning's loggers, by the names ``--trainer.logger`` takes."""
CLASS_OPTIONS = {
    "trainer.logger": f"a Lightning logger ({', '.join(LOGGERS[:4])}, ... or a class path), a list of them, "
    "true or false",
    "trainer.callbacks": "a Lightning callback's class path, or a list of them",
}
"""Options that take classes, and what they take (a bad value is not 'not a list')."""


def _logger_hint(key: str, name: str) -> str:
    """`` (did you mean TensorBoardLogger?)`` for a misspelt logger, matched without the shared 'Logger'."""
    if key != "trainer.logger":
        return ""
    bases = {logger.removesuffix("Logger"): logger for logger in LOGGERS}
    close = closest(name.rsplit(".", 1)[-1].removesuffix("Logger"), bases)
    return f" (did you mean {bases[close]}?)" if close else ""


def known_options() -> list[str]:
    """Every option ``test`` takes, from the signatures that declare them (the ablation settings, the
    Trainer's, every family's LightningModule and DataModules): what a misspelt option is matched to."""
    import dataclasses
    import inspect

    from ablate_lit.common.families import FAMILIES
    from ablate_lit.entry.api import CLASSES
    from ablate_lit.runner.config import AblationConfig
    from ablate_lit.runner.trainer import AblationTrainer

    def params(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]

    groups = {"ablation": [f.name for f in dataclasses.fields(AblationConfig)], "trainer": params(AblationTrainer)}
    for family in FAMILIES.values():
        groups.setdefault("model", []).extend(params(CLASSES[family.module]))
        for data in family.data:
            groups.setdefault("data", []).extend(params(CLASSES[data]))
    found = [f"{group}.{name}" for group, names in groups.items() for name in dict.fromkeys(names)]
    return found + ["config", "name", "root", "verbose", "print_config", "seed_everything"]


def _unknown(option: str) -> str:
    """``unknown option --X (did you mean --Y?)`` for a misspelt option."""
    name = option.lstrip("-").split("=")[0].removesuffix("+")
    try:
        known = known_options()
    except (ImportError, AttributeError, TypeError, ValueError):  # (a courtesy: the error stands without it)
        known = []
    group, _, key = name.rpartition(".")
    same_group = [option.rpartition(".")[2] for option in known if group and option.rpartition(".")[0] == group]
    if same_group:  # a misspelt setting of a known group: matched among that group's settings
        close = closest(key, same_group)
        close = f"{group}.{close}" if close else None
    else:
        close = closest(name, known)
    if close == name and group in ("model", "data"):  # --model.name_or_path without --model CLASS
        return f"--{name} is a setting of a class not chosen; name it first with --{group} CLASS ({class_paths(group)})"
    if close == name:
        close = None
    return f"unknown option --{name}" + (f" (did you mean --{close}?)" if close else "")


def condense(message: str) -> str:
    """One line for a jsonargparse ArgumentError message."""
    text = str(message)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    key = ".".join(keys[:1] + keys[1:2]) if len(keys) > 1 and "class_path" in text else (keys[0] if keys else "")
    option = f"--{key}" if key else "an option"
    if m := re.search(r"File does not exist: '([^']*)'", text):
        return f"{option} file '{m[1]}' not found; check the path"
    if m := re.search(r"Option '([^']+)' is not accepted", text):
        return f"{_unknown(keys[0] + '.' + m[1])}; {HELP}"
    if m := re.search(r"does not accept options? '([^']+)'", text):
        return f"{_unknown(m[1])}; {HELP}"
    if m := re.search(r"Unrecognized arguments: (.*)", text, re.IGNORECASE):
        options = [word for word in m[1].split() if word.startswith("--")]
        if len(options) == 1:
            return f"{_unknown(options[0])}; {HELP}"
        return f"unknown option(s) {m[1].strip()}; {HELP}"
    if m := re.search(r"has no attribute '(\w+)'|No module named '([\w.]+)'", text):
        name = m[1] or m[2]
        if key in CLASS_OPTIONS:
            return f"{option}: unknown class '{name}'{_logger_hint(key, name)}; use {CLASS_OPTIONS[key]}"
        which = class_paths(keys[0]) if keys[:1] in (["model"], ["data"]) else "a class of ablate_lit"
        return f"{option}: unknown class '{name}'; use {which}"
    if m := re.search(r"Problems parsing config:? *(.*)", text, re.DOTALL):
        detail = " ".join(m[1].split())[:160]
        return f"the config is not valid YAML ({detail}); fix the file"
    if m := re.search(r"Unexpected config:? *(.*)", text):
        return (
            f"the config {m[1].strip() or 'is empty or not a mapping'}: it must be a YAML mapping of options ({HELP})"
        )
    got = (
        re.search(r"Got value: (.*)", text)
        or re.search(r"val='([^']*)'", text)
        or re.search(r"Given value: (.*)", text)
    )
    kinds = [k for k in re.findall(r"Expected a <class '(\w+)'>", text) if k != "NoneType"]
    kinds += ["list" for _ in re.findall(r"Subtypes: \[list\[", text)]
    if got and key in CLASS_OPTIONS:
        name = got[1].strip()
        return f"{option}: '{name}' is not a class it takes{_logger_hint(key, name)}; use {CLASS_OPTIONS[key]}"
    if got and kinds:
        wanted = " or ".join(dict.fromkeys(_KINDS.get(k, k) for k in kinds))
        return f"{option}: '{got[1].strip()}' is not {wanted}; {HELP}"
    first = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"{option}: {first[:200]}; {HELP}"


def config_error(exc: Exception) -> str:
    """One line for an error resolving the config's ``${...}`` interpolations (omegaconf)."""
    text = str(exc)
    if m := re.search(r"Environment variable '([^']+)' not found", text):
        hint = (
            " (python -m ablate_lit.testing.tiny DIR builds the tiny assets; then ABLATE_LIT_ASSETS=DIR)"
            if m[1] == "ABLATE_LIT_ASSETS"
            else ""
        )
        return f"the config reads the environment variable {m[1]}, which is not set; set it{hint}"
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    return f"the config cannot be resolved ({first[:160]}); fix the ${{...}} value it names"


def instantiation_error(message: str) -> str | None:
    """One line for a class in the config (a logger, say) whose constructor failed while jsonargparse
    built it (reported as a Union that no subtype validates), or None for any other error."""
    text = str(message)
    cls = re.search(r"Given value: Namespace\(class_path='([\w.]+)'", text)
    first = re.search(r"Errors:\s*\n\s*- (.*)", text)
    if not (text.startswith("Does not validate against any of the Union subtypes") and cls and first):
        return None
    return f"could not create {cls[1]}: {' '.join(first[1].split())[:800]}; fix its init_args"
