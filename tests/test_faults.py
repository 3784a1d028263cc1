"""Faults from outside a run (its folder removed, process limits) and commands given the wrong kind
of path: each ends in one line, and no finished result is lost without a word."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import one_line_error, read_rows, run, tiny_args

SMALL = ["--ablation.methods", "[zero,mean]", "--ablation.seeds", "[0]", "--ablation.log_histograms", "false"]


def test_a_run_folder_removed_while_the_run_writes_fails_and_the_rerun_restores_every_row(
    capsys, tiny_models, corpus, tmp_path, monkeypatch
):
    from ablate_lit.runner.writer import ResultWriter

    clean_args = tiny_args(tiny_models["llama"], corpus, tmp_path / "clean", *SMALL)
    code, _, err = run(capsys, *clean_args)
    assert code == 0, err
    clean = read_rows(tmp_path / "clean" / "run" / "results.csv")

    original, calls = ResultWriter.begin, []

    def removing(self, point, *args):
        calls.append(point)
        if len(calls) == 3:  # two points are stored by now
            shutil.rmtree(self.run_dir)
        return original(self, point, *args)

    monkeypatch.setattr(ResultWriter, "begin", removing)
    args = tiny_args(tiny_models["llama"], corpus, tmp_path / "runs", *SMALL)
    code, _, err = run(capsys, *args)
    line = one_line_error(err)
    assert code == 2 and "was removed or replaced while this run wrote to it" in line, line
    assert "3 row(s) written before are gone" in line and "run the same command again" in line

    monkeypatch.setattr(ResultWriter, "begin", original)
    code, _, err = run(capsys, *args)
    assert code == 0, err
    scores = ("method", "seed", "fraction", "top1", "ce", "n_tokens")
    again = read_rows(tmp_path / "runs" / "run" / "results.csv")
    assert [{k: r[k] for k in scores} for r in again] == [{k: r[k] for k in scores} for r in clean]


def test_rows_deleted_by_hand_during_a_run_fail_it(capsys, tiny_models, corpus, tmp_path, monkeypatch):
    from ablate_lit.runner.writer import ResultWriter

    original, calls = ResultWriter.begin, []

    def deleting(self, point, *args):
        calls.append(point)
        if len(calls) == 3:
            for row in Path(self.run_dir, "points").glob("*.json"):
                row.unlink()
        return original(self, point, *args)

    monkeypatch.setattr(ResultWriter, "begin", deleting)
    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, *SMALL))
    line = one_line_error(err)
    assert code == 2 and "result row(s) this run wrote to" in line and "are gone" in line, line
