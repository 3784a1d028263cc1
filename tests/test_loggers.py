"""``--trainer.logger``: Lightning's loggers get the same curves as TensorBoard (W&B offline, MLflow on a
local file store, CSV), read back from their own files."""

from __future__ import annotations

import csv
import json
import os
import struct
from pathlib import Path

import pytest
from helpers import one_line_error, read_rows, run, tiny_args

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


def wandb_history(save_dir: Path) -> tuple[list[dict], dict]:
    """The history rows and the config of the one offline W&B run under ``save_dir``, parsed from its
    ``.wandb`` file (a LevelDB-style log of protobuf records: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, buf, rows, config = path.read_bytes(), 7, 32768, b"", [], {}
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if n == 0 and kind == 0:
            pos += left  # the block's zero padding
            continue
        buf, pos = buf + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a whole record, or a record's last piece
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            elif record.WhichOneof("record_type") == "config":
                config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    return rows, config


@pytest.mark.slow
def test_wandb_mlflow_csv_and_tensorboard_hold_the_same_points(capsys, tiny_models, corpus, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses a file store without it
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    config = tmp_path / "loggers.yaml"
    store = f"file:{tmp_path / 'mlruns'}"
    config.write_text(
        "trainer:\n  logger:\n"
        f"  - class_path: lightning.pytorch.loggers.TensorBoardLogger\n    init_args: {{save_dir: {tmp_path / 'tb'}}}\n"
        "  - class_path: lightning.pytorch.loggers.WandbLogger\n"
        f"    init_args: {{offline: true, save_dir: {tmp_path / 'wb'}, project: ablate}}\n"
        "  - class_path: lightning.pytorch.loggers.MLFlowLogger\n"
        f"    init_args: {{tracking_uri: '{store}', experiment_name: ablate}}\n"
        f"  - class_path: lightning.pytorch.loggers.CSVLogger\n    init_args: {{save_dir: {tmp_path / 'csv'}}}\n"
    )
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.methods", "[zero,mean,peak]")
    code, out, err = run(capsys, "--config", config, *args)
    assert code == 0, err
    rows = read_rows(tmp_path / "run" / "results.csv")
    expected = {  # (key, step) -> value, as every logger should hold it
        (f"ablation/{name}/{r['method']}_seed{r['seed']}", int(r["pct"])): scale * float(r[column])
        for r in rows
        for name, column, scale in (("top1_percent", "top1", 100), ("ce", "ce", 1))
    }
    assert len(expected) == 2 * 3 * 3 * 2  # metrics x methods x fractions x seeds
    assert not (tmp_path / "run" / "tb").exists()  # TensorBoard went where its logger said

    board = {}
    for series in (tmp_path / "tb" / "lightning_logs" / "version_0").iterdir():
        if series.name.endswith(("_seed0", "_seed1")):
            acc = EventAccumulator(str(series))
            acc.Reload()
            for tag in ("ablation/top1_percent", "ablation/ce"):
                board.update({(f"{tag}/{series.name}", e.step): e.value for e in acc.Scalars(tag)})
    assert board == pytest.approx(expected, rel=1e-6)
    calibration = EventAccumulator(str(tmp_path / "tb" / "lightning_logs" / "version_0" / "calibration"))
    calibration.Reload()
    assert "distribution/atypical" in calibration.Tags()["images"]

    history, wandb_config = wandb_history(tmp_path / "wb")
    points = {(k, r["trainer/global_step"]): v for r in history for k, v in r.items() if k.startswith("ablation/")}
    assert points == pytest.approx(expected, rel=1e-6)
    kinds = {k.removesuffix("/_type"): v for r in history for k, v in r.items() if k.endswith("/_type")}
    assert {kinds[k] for k in ("distribution/atypical", "distribution/layer_average", "neurons/layer_00")} == {
        "images/separated"
    }
    assert kinds["peak_per_neuron/layer_00"] == "histogram"
    assert wandb_config["model"] == rows[0]["model"] and wandb_config["run_id"] == rows[0]["run_id"]

    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "ablate"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    metrics = {
        (k, m.step): m.value for k in {k for k, _ in expected} for m in client.get_metric_history(mlrun.info.run_id, k)
    }
    assert metrics == pytest.approx(expected, rel=1e-6)
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["model_id"] == rows[0]["model_id"]
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id, "distribution")}
    assert {"distribution/atypical.png", "distribution/layer_average.png"} <= artifacts

    (metrics_csv,) = (tmp_path / "csv").glob("lightning_logs/version_*/metrics.csv")
    with open(metrics_csv) as fh:
        table = list(csv.DictReader(fh))
    held = {(k, int(r["step"])): float(v) for r in table for k, v in r.items() if k.startswith("ablation/") and v}
    assert held == pytest.approx(expected, rel=1e-6)

    for where in ("tensorboard --logdir", "W&B run", "MLflow run", "metrics.csv"):
        assert where in out


@pytest.mark.slow
def test_no_logger_writes_no_curves_and_run_takes_loggers(capsys, tiny_models, corpus, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from ablate_lit import run as run_api

    code, _, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path, "--trainer.logger", "false"))
    assert code == 0, err
    assert (tmp_path / "run" / "results.csv").exists() and not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "neurons" / "atypical.png").exists()  # the figures are in the run folder still

    logger = CSVLogger(save_dir=str(tmp_path / "csv"), name="api")
    results = run_api(
        str(tiny_models["llama"]),
        str(corpus),
        root=tmp_path / "api",
        name="run",
        trainer={"accelerator": "cpu", "logger": logger},
        verbose=False,
        methods=["zero"],
        fractions=[0, 0.5],
        seeds=[0],
        max_tokens=120,
        calib_tokens=256,
        context_length=16,
        batch_size=4,
        n_resample=2,
    )
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        table = list(csv.DictReader(fh))
    held = {int(r["step"]): float(r["ablation/ce/zero_seed0"]) for r in table if r.get("ablation/ce/zero_seed0")}
    assert held == pytest.approx({int(r["pct"]): float(r["ce"]) for r in results.rows()}, rel=1e-6)
    assert os.path.exists(Path(logger.log_dir) / "hparams.yaml")


def test_a_logger_that_cannot_start_is_one_line(capsys, tiny_models, corpus, tmp_path):
    """A logger whose constructor refuses its settings, and one whose first contact with its store fails
    (a tracker without a login, say), each stop the run with one line naming the logger."""
    from lightning.pytorch.loggers import CSVLogger, Logger

    from ablate_lit import AblateError
    from ablate_lit import run as run_api

    args = tiny_args(tiny_models["llama"], corpus, tmp_path, "--trainer.logger", "WandbLogger")
    code, _, err = run(capsys, *args, "--trainer.logger.offline", "true", "--trainer.logger.log_model", "true")
    assert code != 0 and "could not create lightning.pytorch.loggers.WandbLogger: Providing log_model=True" in err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) > 80

    class NotLoggedIn(Logger):  # what a hosted tracker's logger does on its first call without credentials
        name, version = "not-logged-in", "0"

        def log_hyperparams(self, params):
            raise PermissionError("no API key found; run `tracker login`")

        def log_metrics(self, metrics, step=None):
            raise AssertionError("never reached")

    kept = CSVLogger(save_dir=str(tmp_path / "csv"), name="kept")
    with pytest.raises(AblateError, match="NotLoggedIn of .* could not start: no API key found"):
        run_api(
            str(tiny_models["llama"]), str(corpus), root=tmp_path / "api", name="run", verbose=False,
            trainer={"accelerator": "cpu", "logger": [kept, NotLoggedIn()]}, methods=["zero"], fractions=[0.5],
            seeds=[0], max_tokens=120, calib_tokens=256, context_length=16, batch_size=4,
        )  # fmt: skip
    assert (Path(kept.log_dir) / "hparams.yaml").exists()  # the loggers that started were closed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", "AFILE"],
         r"the TensorBoardLogger of --trainer.logger could not start: .*Not a directory"),
        (["--trainer.logger", "NoSuchLogger"],
         r"--trainer.logger: 'NoSuchLogger' is not a class it takes; use a Lightning logger \(TensorBoardLogger"),
        (["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLoger"],
         r"--trainer.logger: unknown class 'TensorBoardLoger' \(did you mean TensorBoardLogger\?\); use a Lightning"),
    ],
)  # fmt: skip
def test_a_logger_is_checked_before_the_first_point_and_named_in_its_words(
    capsys, tiny_models, corpus, tmp_path, extra, message
):
    import re

    (tmp_path / "a-file").write_text("x")
    extra = [str(tmp_path / "a-file") if e == "AFILE" else e for e in extra]
    code, out, err = run(capsys, *tiny_args(tiny_models["llama"], corpus, tmp_path / "runs"), *extra)
    assert code == 2 and re.search(message, one_line_error(err)), err[-1500:]
    assert "Traceback" not in err and "[1/" not in out  # refused before any point was evaluated
