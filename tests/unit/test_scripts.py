"""`rft_trl.scripts`, what the examples share: a run on a real model never loads the tiny stand-ins."""

import json
import subprocess
import sys

from rft_trl.scripts import TASK_KINDS
from rft_trl.testing import TASK_ANSWERS, TINY_MODEL_KINDS
from rft_trl.testing.datasets import TASK_BUILDERS

# In a fresh interpreter: is `rft_trl.testing` loaded after importing the scripts, and after a run asks for a
# synthetic task (the built-in tiny demo's data)?
PROBE = """
import json, sys
import rft_trl.scripts as scripts
after_import = "rft_trl.testing" in sys.modules
args = scripts.ScriptArguments(dataset_name="text", num_train_samples=2, num_eval_samples=2)
scripts.load_data(args, seed=0)
print(json.dumps({"after_import": after_import, "after_tiny_task": "rft_trl.testing" in sys.modules}))
"""


def test_importing_the_scripts_does_not_import_the_tiny_models():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["after_import"] is False
    # Control: the same check sees the import once a run asks for a synthetic task.
    assert loaded["after_tiny_task"] is True


def test_every_synthetic_task_has_a_tiny_model_rows_and_answers():
    assert set(TASK_KINDS) == set(TASK_ANSWERS) == set(TASK_BUILDERS)
    assert set(TASK_KINDS.values()) <= set(TINY_MODEL_KINDS)
