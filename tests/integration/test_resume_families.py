"""Full fine-tuning resumes exactly for every family of the model matrix, and LoRA too, in a new process.

Each family trains 2 steps uninterrupted, and 1 step + a checkpoint + 1 step resumed in another process; the final
weights (vision/audio towers included: nothing is frozen) and optimizer states must be bit-identical. The families'
checkpoints hold their saved-format weight names (Qwen2.5-VL's `visual.*` for the in-memory `model.visual.*`, split
or fused MoE experts, ...), which a plain `load_state_dict` cannot read back.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_model_matrix import KINDS
from test_resume import assert_equal_nested, load_pickled_state, run_forked

REPO = Path(__file__).resolve().parents[2]
# Every family in full fine-tuning, and LoRA on one family (the adapter is what is saved and resumed).
RUNS = [*KINDS, "qwen2_5_vl+lora"]

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    sys.path.insert(0, {tests!r})
    from test_model_matrix import batches_for  # noqa: E402

    from rft_trl import PPOTrainerVL, RFTConfig  # noqa: E402
    from rft_trl.data import probe_processor  # noqa: E402
    from rft_trl.testing import build_tiny_model, length_reward  # noqa: E402


    def run(kind, output_dir, stop_after, resume):
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)

        class StopAfter(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == stop_after:
                    control.should_training_stop = True

        family, _, variant = kind.partition("+")
        model, processor = build_tiny_model(family)
        rows = batches_for(processor, probe_processor(processor))[0]
        args = RFTConfig(
            output_dir=output_dir,
            n_samples_per_prompt=2,
            rollout_batch_size=2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=2,
            generate_max_len=4,
            learning_rate=1e-2,
            beta=0.1,
            freeze_encoder=False,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="steps",
            save_steps=1,
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = PPOTrainerVL(
            model,
            [length_reward],
            args,
            train_dataset=Dataset.from_list((rows * 2)[:4]),
            processing_class=processor,
            callbacks=[StopAfter()],
            peft_config=LoraConfig(r=4, lora_alpha=8) if variant == "lora" else None,
        )
        trainer.train(resume_from_checkpoint=True if resume else None)


    if __name__ == "__main__":
        for kind in sys.argv[2:]:
            run(kind, os.path.join(sys.argv[1], kind), 0, resume=True)
    """
)


def test_full_fine_tuning_resumes_exactly_for_every_family(tmp_path):
    script = tmp_path / "train_family.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests" / "integration")))
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # The uninterrupted runs and the first halves in one forked process; run() reads the family from the path.
    wrapper = tmp_path / "forked.py"
    wrapper.write_text(
        script.read_text()
        + textwrap.dedent(
            """

            _run = run


            def run(output_dir, stop_after, resume):
                _run(os.path.basename(output_dir), output_dir, stop_after, resume)
            """
        )
    )
    runs = [(str(root / kind), stop) for kind in RUNS for root, stop in ((uninterrupted, 0), (interrupted, 1))]
    run_forked(wrapper, runs)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(script), str(interrupted), *RUNS], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]

    for kind in RUNS:
        a, b = uninterrupted / kind / "checkpoint-2", interrupted / kind / "checkpoint-2"
        weights = "adapter_model.safetensors" if kind.endswith("+lora") else "model.safetensors"
        weights_a, weights_b = load_file(a / weights), load_file(b / weights)
        assert_equal_nested(weights_a, weights_b, f"{kind} weights")
        optimizer_a, optimizer_b = load_pickled_state(a / "optimizer.pt"), load_pickled_state(b / "optimizer.pt")
        assert_equal_nested(optimizer_a, optimizer_b, f"{kind} optimizer")
        # The comparison can fail: the second step changed the weights, the towers included.
        first = load_file(interrupted / kind / "checkpoint-1" / weights)
        changed = [name for name in first if not torch.equal(first[name], weights_b[name])]
        assert changed, kind
