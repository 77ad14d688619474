"""
pytest plugin of the TRL compatibility run, loaded with `-p trl_compat_plugin` into the pytest that runs TRL's
copied test file (the harness copies this file into the run directory under that name).

Loaded before TRL's `conftest.py` and before the test module is imported, it:

- serves the stand-in `trl-internal-testing/zen*` datasets: `datasets.load_dataset` is wrapped so that those ids
  load the `save_to_disk` folders the harness wrote (streaming gives an `IterableDataset` of the same rows); every
  other id goes to the real `load_dataset`. The test module's `from datasets import load_dataset` runs after this,
  so it binds the wrapper;
- with `--swap`, forces `use_cpu=True` on rft_trl's config on a machine without an accelerator, as TRL's
  `conftest.py` does for TRL's configs (see [`force_use_cpu_for_swapped_config`]);
- defines the `is_<package>_available` helpers that TRL's test helpers import from `trl.import_utils` but the
  installed trl no longer has (named by the harness), each as "the package is importable";
- appends one JSON line per test phase (setup, call, teardown) to the record file, as each phase ends, so that a run
  cut short still has every finished test.

Configured by environment variables set by the harness: `TRL_COMPAT_DATASETS` (the stand-in datasets folder),
`TRL_COMPAT_BACKFILL` (comma-separated helper names) and `TRL_COMPAT_RECORD` (the JSON-lines file).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path

import datasets
import pytest

DATASETS_DIR = Path(os.environ["TRL_COMPAT_DATASETS"])
RECORD = Path(os.environ["TRL_COMPAT_RECORD"])
# How much of a failure's message the record keeps beyond the one-line reason.
DETAIL_LINES = 6
DETAIL_CHARS = 1000
BACKFILL = [name for name in os.environ.get("TRL_COMPAT_BACKFILL", "").split(",") if name]

_hub_load_dataset = datasets.load_dataset


def _stand_in_dataset(path: str, name: str | None, split: str | None, streaming: bool):
    folder = DATASETS_DIR / path.replace("/", "--") / (name or "default")
    if not folder.is_dir():
        raise FileNotFoundError(f"No stand-in for config {name!r} of {path!r} in {DATASETS_DIR}; add it to zen.py.")
    dataset_dict = datasets.load_from_disk(str(folder))
    splits = {split: dataset_dict[split]} if split is not None else dict(dataset_dict)
    if streaming:
        splits = {key: dataset.to_iterable_dataset() for key, dataset in splits.items()}
    if split is not None:
        return splits[split]
    return datasets.IterableDatasetDict(splits) if streaming else datasets.DatasetDict(splits)


def load_dataset(path, name=None, *args, split=None, streaming=False, **kwargs):
    """`datasets.load_dataset`, with the stand-in datasets' ids served from the harness's folder."""
    if (DATASETS_DIR / path.replace("/", "--")).is_dir():
        if args or kwargs:
            raise TypeError(f"The stand-in of {path!r} takes only name, split and streaming; got {args} {kwargs}.")
        return _stand_in_dataset(path, name, split, streaming)
    return _hub_load_dataset(path, name, *args, split=split, streaming=streaming, **kwargs)


datasets.load_dataset = load_dataset


def _backfill_import_utils(names: list[str]) -> None:
    import_utils = importlib.import_module("trl.import_utils")
    for name in names:
        package = name.removeprefix("is_").removesuffix("_available")
        setattr(import_utils, name, lambda package=package: importlib.util.find_spec(package) is not None)


_backfill_import_utils(BACKFILL)


@pytest.fixture(autouse=True)
def force_use_cpu_for_swapped_config(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    TRL's `conftest.py` forces `use_cpu=True` on TRL's configs when there is no accelerator (their `bf16=True` default
    raises otherwise); with `--swap` the test module's `GRPOConfig` is rft_trl's `RFTConfig`, which that fixture does
    not reach. This gives it the same treatment, so the swap is judged on the trainer, not on TRL's CPU test setup.
    """
    from transformers.testing_utils import torch_device
    from trl.trainer.base_config import _BaseConfig

    config_class = vars(request.module).get("GRPOConfig")
    if config_class is None or issubclass(config_class, _BaseConfig):
        return
    if torch_device is not None and torch_device != "cpu":
        return
    original_post_init = config_class.__post_init__

    def post_init_on_cpu(self):
        self.use_cpu = True
        original_post_init(self)

    monkeypatch.setattr(config_class, "__post_init__", post_init_on_cpu)


def _write(event: dict) -> None:
    with RECORD.open("a") as handle:
        handle.write(json.dumps(event) + "\n")


def pytest_collection_finish(session: pytest.Session) -> None:
    rft_trl = importlib.util.find_spec("rft_trl")
    _write(
        {
            "event": "collected",
            "nodeids": [item.nodeid for item in session.items],
            "rft_trl": rft_trl.origin if rft_trl is not None else None,
        }
    )


def _detail(call: pytest.CallInfo) -> str:
    """The exception's message, first lines only: a `pytest.raises(match=...)` mismatch names the actual message on
    its third line, which is what tells apart the causes behind one assertion type."""
    if call.excinfo is None:
        return ""
    return "\n".join(str(call.excinfo.value).strip().splitlines()[:DETAIL_LINES])[:DETAIL_CHARS]


def _reason(call: pytest.CallInfo, report: pytest.TestReport) -> str:
    """One line: `ExceptionType: first line of its message`, or a skip's or an xfail's reason."""
    if report.skipped and "wasxfail" in vars(report):
        return f"xfail: {report.wasxfail}"
    if report.skipped:
        # A skip's longrepr is (path, line, "Skipped: reason").
        return str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if report.failed and call.excinfo is not None:
        lines = str(call.excinfo.value).strip().splitlines()
        return f"{call.excinfo.typename}: {lines[0] if lines else ''}".strip()
    if report.failed:
        # A strict xfail that passed fails without an exception.
        return str(report.longrepr).strip().splitlines()[0]
    return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    _write(
        {
            "event": "phase",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "xfail": "wasxfail" in vars(report),
            "duration": round(report.duration, 3),
            "reason": _reason(call, report),
            "detail": _detail(call) if report.failed else "",
        }
    )
