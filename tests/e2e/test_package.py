"""The package's import surface: optional heavy integrations stay optional."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_rft_trl_loads_no_optional_integration():
    code = (
        "import sys, rft_trl, rft_trl.trainers, rft_trl.models, rft_trl.data, rft_trl.rewards, rft_trl.testing\n"
        "print('loaded:' + ','.join(m for m in ('deepspeed', 'flash_attn', 'vllm', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    # Libraries may print their own notices first: the answer is the last line.
    loaded = out.stdout.strip().splitlines()[-1]
    assert loaded == "loaded:", loaded


def test_public_names_resolve():
    import rft_trl

    for name in rft_trl.__all__:
        assert getattr(rft_trl, name) is not None, name
    from rft_trl.models.actor_al import ActorAL
    from rft_trl.models.actor_vl import ActorVL

    assert ActorAL.field_aliases == {"audio_values": "input_features"} and ActorVL.field_aliases == {}
