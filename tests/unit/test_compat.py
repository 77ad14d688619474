"""rft_trl.compat: the seed's names stay where the seed documents them, as faces of the one path the trainer uses."""

import ast
import importlib
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import rft_trl
from rft_trl import compat
from rft_trl.trainers import batching
from rft_trl.trainers.batching import BufferItem
from rft_trl.trainers.experience import Experience
from rft_trl.trainers.replay_buffer import NaiveReplayBuffer

PACKAGE = Path(rft_trl.__file__).parent
# The seed's module paths, kept as aliases of compat's modules; nothing in the package imports them.
SEED_PATH_ALIASES = {"models/actor_vl.py", "models/actor_al.py", "models/loss.py", "trainers/replay_buffer_utils.py"}

SEED_NAMES = [
    ("rft_trl", "ActorVL"),
    ("rft_trl", "ActorAL"),
    ("rft_trl.models", "ActorVL"),
    ("rft_trl.models", "ActorAL"),
    ("rft_trl.models", "PolicyLoss"),
    ("rft_trl.models", "ValueLoss"),
    ("rft_trl.models", "GPTLMLoss"),
    ("rft_trl.models.actor_vl", "ActorVL"),
    ("rft_trl.models.actor_al", "ActorAL"),
    ("rft_trl.models.loss", "PolicyLoss"),
    ("rft_trl.models.loss", "ValueLoss"),
    ("rft_trl.models.loss", "GPTLMLoss"),
    ("rft_trl.trainers", "BufferItemVL"),
    ("rft_trl.trainers", "ExperienceVL"),
    ("rft_trl.trainers", "NaiveReplayBufferVL"),
    ("rft_trl.trainers", "is_vl_experience"),
    ("rft_trl.trainers", "make_experience_batch"),
    ("rft_trl.trainers", "split_experience_batch"),
    ("rft_trl.trainers.experience", "ExperienceVL"),
    ("rft_trl.trainers.replay_buffer", "NaiveReplayBufferVL"),
    ("rft_trl.trainers.replay_buffer_utils", "BufferItemVL"),
    ("rft_trl.trainers.replay_buffer_utils", "is_vl_experience"),
    ("rft_trl.trainers.replay_buffer_utils", "make_experience_batch"),
    ("rft_trl.trainers.replay_buffer_utils", "split_experience_batch"),
]


def module_level_imports(path: Path) -> set[str]:
    """The absolute names a module imports when it is imported (function bodies, which run later, left out)."""
    package = ["rft_trl", *path.relative_to(PACKAGE).parent.parts]
    imported = set()

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node):
            pass

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Import(self, node):
            imported.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            imported.add(module)
            # `from .. import compat` names a submodule.
            imported.update(f"{module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return imported


def test_nothing_below_compat_imports_it():
    below = [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "compat"
        and path.relative_to(PACKAGE).as_posix() not in SEED_PATH_ALIASES | {"__init__.py"}
    ]
    assert any(path.name == "ppo_trainer_vl.py" for path in below)
    # The check sees an import of compat where there is one: in a seed-path alias.
    assert "rft_trl.compat.actors" in module_level_imports(PACKAGE / "models" / "actor_vl.py")
    upward = {}
    for path in below:
        names = sorted(name for name in module_level_imports(path) if name.startswith("rft_trl.compat"))
        if names:
            upward[path.relative_to(PACKAGE).as_posix()] = names
    assert upward == {}


@pytest.mark.parametrize("module, name", SEED_NAMES, ids=[f"{m}.{n}" for m, n in SEED_NAMES])
def test_seed_names_resolve_to_compat(module, name):
    assert getattr(importlib.import_module(module), name) is getattr(compat, name)


@pytest.mark.parametrize("module", ["rft_trl.models", "rft_trl.trainers", "rft_trl.trainers.experience"])
def test_unknown_names_still_raise(module):
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        getattr(importlib.import_module(module), "NoSuchName")  # noqa: B009


def sample_fields(length: int, actions: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "sequences": torch.randint(1, 50, (length,), generator=g),
        **{
            name: torch.randn(actions, generator=g)
            for name in ("action_log_probs", "base_action_log_probs", "values", "returns", "advantages")
        },
        "attention_mask": torch.ones(length, dtype=torch.long),
        "action_mask": torch.ones(actions, dtype=torch.bool),
        "info": {"reward": float(seed)},
    }


def assert_same(a, b, name):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), name
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), name
        for key in a:
            assert_same(a[key], b[key], f"{name}[{key!r}]")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{name}[{i}]")
    else:
        assert a == b, name


@pytest.mark.parametrize("packing_samples", [False, True], ids=["padded", "packed"])
def test_vl_items_batch_like_the_buffer_items_holding_the_same_tensors(packing_samples):
    # Two samples: one text-only, one with a 2x2-patch image of 3 features (4 rows of pixel_values).
    image = {"pixel_values": torch.randn(4, 3), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    samples = [sample_fields(5, 2, seed=0), sample_fields(7, 3, seed=1)]
    plain = [BufferItem(**samples[0]), BufferItem(**samples[1], multimodal_inputs=image)]
    vl = [
        compat.BufferItemVL(**samples[0]),
        compat.BufferItemVL(**samples[1], pixel_values=image["pixel_values"], image_grid_thws=image["image_grid_thw"]),
    ]
    expected = batching.make_experience_batch(plain, packing_samples=packing_samples)
    batch = compat.make_experience_batch(vl, packing_samples=packing_samples)
    assert type(expected) is Experience and type(batch) is compat.ExperienceVL
    for f in fields(Experience):
        if f.name != "multimodal_samples":
            assert_same(getattr(batch, f.name), getattr(expected, f.name), f.name)
    # The trainer's batching takes its own items only, and says which class it got.
    with pytest.raises(ValueError, match=r"needs BufferItem items, got \['BufferItemVL'\]"):
        batching.make_experience_batch(vl, packing_samples=packing_samples)


def test_the_trainers_buffer_keeps_buffer_items_for_images():
    image = {"pixel_values": torch.randn(4, 3), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    items = [BufferItem(**sample_fields(5, 2, seed=0), multimodal_inputs=image), BufferItem(**sample_fields(6, 2, 1))]
    buffer = NaiveReplayBuffer(sample_batch_size=2)
    buffer.append(batching.make_experience_batch(items))
    assert [type(item) for item in buffer.items] == [BufferItem, BufferItem]
    batch = buffer.collate_fn(buffer.items)
    assert type(batch) is Experience
    assert_same(batch.multimodal_inputs, image, "multimodal_inputs")
