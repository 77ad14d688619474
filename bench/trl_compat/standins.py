"""
Offline stand-ins for the Hugging Face Hub models that TRL's `tests/test_grpo_trainer.py` loads by id.

Each Hub id maps to a builder that returns `(model, processing_class)` of the same architecture as the Hub model, at
the tiny size of `rft_trl.testing` (hidden size 64, two layers) and around its tiny locally trained tokenizer.
Families the project has a builder for use it (`build_tiny_model(kind)`); the others are built here with
transformers directly, from the project's shared text-tower sizes. [`write_model_snapshot`] saves a stand-in into a
Hugging Face hub cache (`models--org--name/snapshots/<rev>/` + `refs/main`), so that `from_pretrained("org/name")`
resolves it with `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE` pointing at that cache.

What a stand-in cannot reproduce: the real tokenizer's vocabulary. Tests that hard-code token ids of a released
tokenizer (e.g. Qwen2.5's `<|im_end|>` = 151645) see ids beyond the tiny vocabulary. For the Qwen3, Qwen3-MoE and
Qwen3.5 ids that TRL's tool and environment tests load, [`RELEASED_VOCAB_STANDINS`] holds stand-ins with the released
vocabularies, tokenizers and chat templates (`rft_trl.testing.RELEASED_VOCAB_BUILDERS`); [`stand_ins`] picks them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import (
    Cohere2Config,
    Cohere2ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Glm4MoeConfig,
    Glm4MoeForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    MistralConfig,
    MistralForCausalLM,
    NemotronHConfig,
    NemotronHForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.models.gemma4 import (
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessor,
    Gemma4Processor,
    Gemma4VideoProcessor,
)

from rft_trl.testing import RELEASED_VOCAB_BUILDERS, build_tiny_model, build_tiny_tokenizer
from rft_trl.testing.families.common import (
    HEAD_DIM,
    HIDDEN_SIZE,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
    NUM_LAYERS,
    PATCH_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    token_ids,
    vision_tower,
)
from rft_trl.testing.families.gemma4 import GEMMA4_TOKENS, GEMMA4_VIDEO_TOKEN, gemma4_token_ids
from rft_trl.testing.families.qwen import QWEN_VISION_TOKENS

Builder = Callable[[], tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerFast]]

# Seed of every stand-in: the same weights in every run, so a TRL run and a swapped run see the same models.
SEED = 0
# Llama 3.2's reserved padding token: TRL's tests set it as the pad token of the Llama reward model's tokenizer.
LLAMA_PAD_TOKEN = "<|finetune_right_pad_id|>"
# MoE text layers: experts half as wide as the dense MLP.
MOE_INTERMEDIATE_SIZE = HIDDEN_SIZE // 2


def _text_model(
    model_class: type[PreTrainedModel],
    config_class: type[PretrainedConfig],
    tokenizer: PreTrainedTokenizerFast | None = None,
    **overrides,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """
    A tiny text model of `model_class` on the project's text-tower sizes ([`text_kwargs`]) and tiny tokenizer.

    Args:
        model_class (`type[PreTrainedModel]`):
            The architecture (`LlamaForCausalLM`, `Qwen3ForSequenceClassification`, ...).
        config_class (`type[PretrainedConfig]`):
            Its config class.
        tokenizer (`PreTrainedTokenizerFast`, *optional*):
            Defaults to [`build_tiny_tokenizer`] with the stand-in seed.
        overrides:
            Config fields of the family (head_dim, experts, layer types ...), over the shared sizes.
    """
    tokenizer = tokenizer or build_tiny_tokenizer(seed=SEED)
    config = config_class(**{**text_kwargs(tokenizer), **overrides})
    if model_class.__name__.endswith("ForSequenceClassification"):
        # A sequence classifier does not generate: no generation config to finish (as `build_tiny_reward_model`).
        torch.manual_seed(SEED)
        return model_class(config).eval(), tokenizer
    return init_model(model_class, config, SEED, tokenizer), tokenizer


def _project_model(kind: str) -> tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerFast]:
    return build_tiny_model(kind, seed=SEED)


def _llama_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(seed=SEED, extra_special_tokens=[LLAMA_PAD_TOKEN])


def _qwen3_moe() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return _text_model(
        Qwen3MoeForCausalLM,
        Qwen3MoeConfig,
        head_dim=HEAD_DIM,
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
        moe_intermediate_size=MOE_INTERMEDIATE_SIZE,
        decoder_sparse_step=1,
        norm_topk_prob=True,
    )


def _glm4_moe() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    # Layer 0 dense, layer 1 a routed MoE with one shared expert, as the released model's first-dense layout.
    return _text_model(
        Glm4MoeForCausalLM,
        Glm4MoeConfig,
        head_dim=HEAD_DIM,
        n_routed_experts=NUM_EXPERTS,
        num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
        moe_intermediate_size=MOE_INTERMEDIATE_SIZE,
        n_shared_experts=1,
        first_k_dense_replace=1,
        num_mtp_layers=0,
    )


def _gpt_oss() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return _text_model(
        GptOssForCausalLM,
        GptOssConfig,
        head_dim=HEAD_DIM,
        num_local_experts=NUM_EXPERTS,
        num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=128,
    )


def _nemotron_h() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    # Nemotron 3 nano's three block kinds, one each: Mamba-2, attention, MoE. Mamba heads x head dim = 2 x hidden.
    return _text_model(
        NemotronHForCausalLM,
        NemotronHConfig,
        layers_block_type=["linear_attention", "full_attention", "moe"],
        head_dim=HEAD_DIM,
        ssm_state_size=16,
        mamba_num_heads=4,
        mamba_head_dim=HEAD_DIM,
        n_groups=1,
        chunk_size=16,
        n_routed_experts=NUM_EXPERTS,
        num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
        moe_intermediate_size=MOE_INTERMEDIATE_SIZE,
        moe_shared_expert_intermediate_size=MOE_INTERMEDIATE_SIZE,
    )


def _llava_next() -> tuple[PreTrainedModel, ProcessorMixin]:
    # CLIP tower on 28x28 tiles (4 patches + CLS); anyres picks a grid of up to 2x2 tiles. Features come from the
    # second-to-last vision layer as released, so the last one gets no gradient (TRL's test expects exactly that).
    image = "<image>"
    tile = 2 * PATCH_SIZE
    pinpoints = [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    tokenizer = family_tokenizer(SEED, [image], image=image)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    processor = make_processor(
        LlavaNextProcessor,
        tokenizer,
        image_processor=image_processor,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=image,
        num_additional_image_tokens=1,
    )
    config = LlavaNextConfig(
        vision_config=vision_tower("clip_vision_model", tile, projection_dim=HIDDEN_SIZE),
        text_config={"model_type": "llama", **text_kwargs(tokenizer)},
        image_token_index=tokenizer.convert_tokens_to_ids(image),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(tile // PATCH_SIZE) ** 2,
        tie_word_embeddings=False,
    )
    return init_model(LlavaNextForConditionalGeneration, config, SEED, tokenizer), processor


def _qwen3_5(moe: bool) -> tuple[PreTrainedModel, ProcessorMixin]:
    # Qwen3.5 takes Qwen3-VL's processor (16-pixel patches merged 2x2): the project's tiny Qwen3-VL one.
    _, processor = build_tiny_model("qwen3_vl", seed=SEED)
    tokenizer = processor.tokenizer
    # A gated-delta-net layer then a full-attention layer, as the released 3:1 pattern cut to two layers. Rotary on a
    # quarter of head_dim 32: 4 frequencies in (temporal, height, width) sections.
    text_config = {
        **text_kwargs(tokenizer),
        "head_dim": HEAD_DIM,
        "layer_types": ["linear_attention", "full_attention"],
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
    }
    if moe:
        text_config.update(
            num_experts=NUM_EXPERTS,
            num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
            moe_intermediate_size=MOE_INTERMEDIATE_SIZE,
            shared_expert_intermediate_size=MOE_INTERMEDIATE_SIZE,
        )
        del text_config["intermediate_size"]
    vision_config = {
        "depth": NUM_LAYERS,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": HIDDEN_SIZE,
        "num_position_embeddings": 16,
    }
    config_class, model_class = (
        (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration)
        if moe
        else (Qwen3_5Config, Qwen3_5ForConditionalGeneration)
    )
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=False,
        **token_ids(tokenizer, **QWEN_VISION_TOKENS),
    )
    return init_model(model_class, config, SEED, tokenizer), processor


def _gemma4() -> tuple[PreTrainedModel, ProcessorMixin]:
    # The fewest soft tokens Gemma 4's image processor supports (70): 630 patches of 16 pixels pooled 3x3.
    soft_tokens = 70
    named, video = GEMMA4_TOKENS, GEMMA4_VIDEO_TOKEN
    tokenizer = family_tokenizer(
        SEED, [*named.values(), video], image=named["image_token"], video=video, named_tokens=named
    )
    image_processor = Gemma4ImageProcessor(max_soft_tokens=soft_tokens, image_seq_length=soft_tokens)
    processor = make_processor(
        Gemma4Processor,
        tokenizer,
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=image_processor,
        video_processor=Gemma4VideoProcessor(),
        image_seq_length=soft_tokens,
    )
    text_config = {
        **text_kwargs(tokenizer),
        "head_dim": HEAD_DIM,
        "global_head_dim": HEAD_DIM,
        "layer_types": ["sliding_attention", "full_attention"],
        "num_kv_shared_layers": 0,
        "vocab_size_per_layer_input": len(tokenizer),
        "hidden_size_per_layer_input": 16,
        "tie_word_embeddings": True,
    }
    vision_config = {
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": HEAD_DIM,
        "position_embedding_size": soft_tokens * 9,
        "default_output_length": soft_tokens,
    }
    config = Gemma4Config(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=None,
        tie_word_embeddings=True,
        **gemma4_token_ids(tokenizer),
    )
    return init_model(Gemma4ForConditionalGeneration, config, SEED, tokenizer), processor


# The remote-code stand-in: a Qwen2 causal LM under a model type transformers does not know, whose classes live in
# the snapshot and load only with `trust_remote_code=True`.
REMOTE_MODULES = {
    "configuration_remote.py": (
        '"""Configuration of the remote-code stand-in: Qwen2\'s under another model type."""\n\n'
        "from transformers import Qwen2Config\n\n\n"
        "class RemoteConfig(Qwen2Config):\n"
        '    model_type = "remote"\n'
    ),
    "modeling_remote.py": (
        '"""Model of the remote-code stand-in: Qwen2ForCausalLM under the remote config."""\n\n'
        "from transformers import Qwen2ForCausalLM\n\n"
        "from .configuration_remote import RemoteConfig\n\n\n"
        "class RemoteForCausalLM(Qwen2ForCausalLM):\n"
        "    config_class = RemoteConfig\n"
    ),
}
REMOTE_CONFIG_FIELDS = {
    "model_type": "remote",
    "architectures": ["RemoteForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_remote.RemoteConfig",
        "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM",
    },
}


def _remote() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return _text_model(Qwen2ForCausalLM, Qwen2Config)


ORG = "trl-internal-testing"
# `org/name`: what `from_pretrained` and `load_dataset` take as a Hub repository id.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# Hub id -> builder. The Qwen/SmolVLM ids without the testing org are the released models that TRL's GPU-only and
# vLLM tests load; they get the tiny stand-in of their family so that no test fails for want of a snapshot.
STANDINS: dict[str, Builder] = {
    f"{ORG}/tiny-Qwen2ForCausalLM-2.5": partial(_project_model, "qwen2"),
    f"{ORG}/tiny-Qwen2ForSequenceClassification-2.5": partial(_project_model, "qwen2_reward"),
    f"{ORG}/tiny-Qwen2VLForConditionalGeneration": partial(_project_model, "qwen2_vl"),
    f"{ORG}/tiny-Qwen2_5_VLForConditionalGeneration": partial(_project_model, "qwen2_5_vl"),
    f"{ORG}/tiny-Gemma3ForConditionalGeneration": partial(_project_model, "gemma3"),
    f"{ORG}/tiny-LlavaForConditionalGeneration": partial(_project_model, "llava"),
    f"{ORG}/tiny-SmolVLMForConditionalGeneration": partial(_project_model, "smolvlm"),
    "Qwen/Qwen2.5-0.5B-Instruct": partial(_project_model, "qwen2"),
    "HuggingFaceTB/SmolVLM-Instruct": partial(_project_model, "smolvlm"),
    f"{ORG}/tiny-Qwen3ForCausalLM": partial(_text_model, Qwen3ForCausalLM, Qwen3Config, head_dim=HEAD_DIM),
    f"{ORG}/tiny-Qwen3ForSequenceClassification": partial(
        _text_model, Qwen3ForSequenceClassification, Qwen3Config, head_dim=HEAD_DIM, num_labels=1
    ),
    f"{ORG}/tiny-Qwen3MoeForCausalLM": _qwen3_moe,
    f"{ORG}/tiny-LlamaForCausalLM-3.2": lambda: _text_model(LlamaForCausalLM, LlamaConfig, _llama_tokenizer()),
    f"{ORG}/tiny-LlamaForSequenceClassification-3.2": lambda: _text_model(
        LlamaForSequenceClassification, LlamaConfig, _llama_tokenizer(), num_labels=1
    ),
    f"{ORG}/tiny-MistralForCausalLM-0.2": partial(_text_model, MistralForCausalLM, MistralConfig, sliding_window=None),
    # Gemma 2 ties the input embeddings and the LM head (TRL's fp32-head test depends on it).
    f"{ORG}/tiny-Gemma2ForCausalLM": partial(
        _text_model,
        Gemma2ForCausalLM,
        Gemma2Config,
        head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM,
        sliding_window=512,
        tie_word_embeddings=True,
    ),
    f"{ORG}/tiny-Cohere2ForCausalLM": partial(
        _text_model,
        Cohere2ForCausalLM,
        Cohere2Config,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=512,
    ),
    f"{ORG}/tiny-Glm4MoeForCausalLM": _glm4_moe,
    f"{ORG}/tiny-GptOssForCausalLM": _gpt_oss,
    f"{ORG}/tiny-NemotronHForCausalLM-nano": _nemotron_h,
    f"{ORG}/tiny-RemoteForCausalLM": _remote,
    f"{ORG}/tiny-LlavaNextForConditionalGeneration": _llava_next,
    f"{ORG}/tiny-Qwen3_5ForConditionalGeneration-NoThink": partial(_qwen3_5, moe=False),
    f"{ORG}/tiny-Qwen3_5MoeForConditionalGeneration-3.6": partial(_qwen3_5, moe=True),
    f"{ORG}/tiny-Gemma4ForConditionalGeneration": _gemma4,
}

# The ids whose tests hard-code released token ids (TRL's tool, environment and tool-response tests), with stand-ins
# over the released vocabularies. Their 152k-248k-row heads make every step several times slower than the tiny
# tokenizer's, so they replace the tiny stand-ins only when asked ([`stand_ins`]).
RELEASED_VOCAB_STANDINS: dict[str, Builder] = {
    f"{ORG}/tiny-Qwen3ForCausalLM": partial(RELEASED_VOCAB_BUILDERS["qwen3"], SEED),
    f"{ORG}/tiny-Qwen3MoeForCausalLM": partial(RELEASED_VOCAB_BUILDERS["qwen3_moe"], SEED),
    f"{ORG}/tiny-Qwen3_5ForConditionalGeneration-NoThink": partial(RELEASED_VOCAB_BUILDERS["qwen3_5"], SEED),
}


def stand_ins(released_vocab: bool) -> dict[str, Builder]:
    """[`STANDINS`], with [`RELEASED_VOCAB_STANDINS`] in place of the tiny-vocabulary ones when `released_vocab`."""
    return {**STANDINS, **RELEASED_VOCAB_STANDINS} if released_vocab else dict(STANDINS)


def scan_hub_ids(test_file: Path) -> list[str]:
    """
    Every string constant of `test_file` shaped like a Hub id (`org/name`); comments are not code, so the ids a
    comment mentions are left out.

    The shape also matches metric names (`completions/mean_length`); the caller tells them apart by whether a
    stand-in exists for them.

    Args:
        test_file (`Path`):
            A Python test module.

    Returns:
        `list[str]`: the distinct ids, sorted.
    """
    tree = ast.parse(test_file.read_text())
    return sorted(
        {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and HUB_ID.fullmatch(node.value)
        }
    )


def snapshot_revision(hub_id: str, fingerprint: str) -> str:
    """A stable 40-hex revision for a stand-in: changes when the builders' source changes (`fingerprint`)."""
    return hashlib.sha1(f"{hub_id}\n{fingerprint}".encode()).hexdigest()


def repo_folder(cache_dir: Path, hub_id: str, repo_type: str = "model") -> Path:
    """The hub cache folder of a repository: `models--org--name` (or `datasets--org--name`)."""
    return cache_dir / f"{repo_type}s--{hub_id.replace('/', '--')}"


def cached_snapshot(cache_dir: Path, hub_id: str, fingerprint: str) -> Path | None:
    """The stand-in's snapshot if one built from the same builder source is already in the cache, else `None`."""
    revision = snapshot_revision(hub_id, fingerprint)
    folder = repo_folder(cache_dir, hub_id)
    refs = folder / "refs" / "main"
    snapshot = folder / "snapshots" / revision
    if refs.is_file() and refs.read_text().strip() == revision and (snapshot / "config.json").is_file():
        return snapshot
    return None


def write_model_snapshot(cache_dir: Path, hub_id: str, fingerprint: str, builder: Builder) -> Path:
    """
    Build the stand-in of `hub_id` and save it, with its processor or tokenizer, as the `main` revision of that
    repository in the hub cache `cache_dir`.

    Args:
        cache_dir (`Path`):
            The folder `HF_HUB_CACHE` will point at.
        hub_id (`str`):
            The repository id.
        fingerprint (`str`):
            Digest of the builders' source, which names the revision.
        builder (`Builder`):
            Its builder, from [`stand_ins`].

    Returns:
        `Path`: the snapshot folder.
    """
    model, processing_class = builder()
    revision = snapshot_revision(hub_id, fingerprint)
    folder = repo_folder(cache_dir, hub_id)
    snapshot = folder / "snapshots" / revision
    # Written beside and moved in whole, so an interrupted build never leaves a snapshot that looks complete.
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".staging-"))
    model.save_pretrained(staging)
    processing_class.save_pretrained(staging)
    if hub_id == f"{ORG}/tiny-RemoteForCausalLM":
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        config.update(REMOTE_CONFIG_FIELDS)
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        for name, source in REMOTE_MODULES.items():
            (staging / name).write_text(source)
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(snapshot)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return snapshot
