"""Tasks that ship with the package, generated from the templates and word lists written here (no
download): indirect-object identification (``ioi``) and greater-than (``greater_than``).

Rows are generated for the model's tokenizer, so that every row passes the checks any task row
must pass (``data.task_rows``): the answer and distractor are continuations of the prompt in tokens,
and the counterfactual prompt has the prompt's token length, position by position. Names (IOI) are
drawn from one group of equal token length, so a counterfactual that swaps names keeps every later
token where it was. A row that fails a check anyway (a tokenizer that merges across words) is
replaced by another draw; generation is deterministic given (task, tokenizer, size, seed).

* **ioi** (Wang et al. 2023, "Interpretability in the wild"): "When Mary and John went to the store,
  John gave a drink to" -> answer " Mary" (the indirect object), distractor " John" (the subject).
  Both orders of the names (ABBA and BABA) in equal number. The counterfactual is the ABC prompt
  of the paper: the same template with three other names, so it carries the template but not the
  information of which name to answer.
* **greater_than** (Hanna et al. 2023, "How does GPT-2 compute greater-than?"): "The war lasted
  from the year 1732 to the year 17" -> answer "33" (the first year after the start), distractor
  "31" (the last year before it). The counterfactual is the paper's "01" prompt (start year
  XX01), which says nothing about the threshold.
"""

from __future__ import annotations

import random
from typing import Callable

from ablate_lit.common.errors import AblateError

IOI_TEMPLATES = [
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "After {A} and {B} went to the office, {S} gave a letter to",
    "While {A} and {B} were working at the garden, {S} gave a flower to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "When {A} and {B} got a snack at the station, {S} decided to give it to",
    "Friends {A} and {B} found a necklace at the house. {S} gave it to",
    "Then, {A} and {B} were thinking about going to the school. {S} wanted to give a book to",
    "After the lunch, {A} and {B} went to the beach. {S} gave a ring to",
    "The local big {A} and {B} were working at the hospital. {S} handed a bone to",
    "When {A} and {B} arrived at the restaurant, {S} sent a message to",
    "Afterwards, {A} and {B} went to the market. {S} passed a basket to",
]
NAMES = [
    "Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Laura", "Mark", "Emma", "Peter",
    "Lisa", "Robert", "Kate", "Michael", "Alice", "George", "Susan", "Daniel", "Helen", "Richard", "Linda",
    "Thomas", "Rose", "Charles", "Jane", "Steven", "Grace", "Edward", "Ruth", "Henry", "Amy", "Jack", "Kelly",
    "Simon", "Emily", "Adam", "Claire", "Frank", "Diana", "Brian", "Nancy", "Kevin", "Julia", "Andrew",
    "Sophie", "Martin", "Lucy", "Oliver", "Karen", "Eric", "Joan", "Alan", "Ellen", "Victor", "Irene",
    "Carl", "Nina", "Ben", "Eva", "Sam", "Ian", "Jim", "Tim", "Dan", "Bob", "Joe", "Max", "Leo",
]  # fmt: skip
"""First names of one to a few tokens in common tokenizers (a row's names share a token length)."""
EVENTS = [
    "war", "expedition", "drought", "strike", "blockade", "famine", "occupation", "rebellion", "siege",
    "voyage", "dynasty", "truce", "campaign", "pilgrimage", "plague", "reign", "crisis", "boom",
]  # fmt: skip
GREATER_THAN_TEMPLATES = [
    "The {event} lasted from the year {century}{start} to the year {century}",
    "The {event} started in the year {century}{start} and ended in the year {century}",
]
TASKS = ("ioi", "greater_than")
MAX_DRAWS = 50
"""Draws per row before generation gives up (a tokenizer none of whose names or years fit)."""


def generate(task: str, tokenizer, size: int, seed: int, problem: Callable[[dict], str | None]) -> list[dict]:
    """``size`` rows of the shipped ``task`` for ``tokenizer``, each accepted by ``problem`` (which
    returns why a row is not valid, or None)."""
    if task not in TASKS:
        raise AblateError(f"unknown shipped task '{task}'; use one of: {', '.join(TASKS)}, or a task file")
    rng = random.Random(f"{task}-{seed}")
    draw = _ioi_row if task == "ioi" else _greater_than_row
    groups = _name_groups(tokenizer) if task == "ioi" else None
    rows: list[dict] = []
    for i in range(size):
        for _ in range(MAX_DRAWS):
            row = draw(rng, i, groups)
            if problem(row) is None:
                rows.append(row)
                break
        else:
            raise AblateError(
                f"could not generate a valid '{task}' row for this tokenizer in {MAX_DRAWS} draws "
                f"({problem(row)}); write the task as a file (prompt, answer, ...) instead"
            )
    return rows


def _name_groups(tokenizer) -> list[list[str]]:
    """The names grouped by their token length after a space; only groups of five or more (a row
    needs two names and a counterfactual three others), the shortest tokens first."""
    by_length: dict[int, list[str]] = {}
    for name in NAMES:
        by_length.setdefault(len(tokenizer(" " + name, add_special_tokens=False)["input_ids"]), []).append(name)
    groups = [names for _, names in sorted(by_length.items()) if len(names) >= 5]
    if not groups:
        raise AblateError("the tokenizer splits the task's names into too many lengths; write the task as a file")
    return groups


def _ioi_row(rng: random.Random, i: int, groups: list[list[str]]) -> dict:
    names = rng.choice(groups[:1] if len(groups[0]) >= 12 else groups)
    io, subject, *others = rng.sample(names, 5)
    template = rng.choice(IOI_TEMPLATES)
    first, second = (io, subject) if i % 2 == 0 else (subject, io)  # ABBA, then BABA
    return {
        "prompt": template.format(A=first, B=second, S=subject),
        "answer": " " + io,
        "distractor": " " + subject,
        "counterfactual": template.format(A=others[0], B=others[1], S=others[2]),
    }


def _greater_than_row(rng: random.Random, i: int, groups=None) -> dict:
    start = rng.randint(2, 97)
    century = str(rng.randint(11, 17))
    template, event = rng.choice(GREATER_THAN_TEMPLATES), rng.choice(EVENTS)
    return {
        "prompt": template.format(event=event, century=century, start=f"{start:02d}"),
        "answer": f"{start + 1:02d}",
        "distractor": f"{start - 1:02d}",
        "counterfactual": template.format(event=event, century=century, start="01"),
    }
