"""
Installed into `.venv-vllm` by `scripts/setup_vllm.sh`, imported at interpreter start by a `.pth` file there.

PyPI's torchvision wheels are CUDA builds; beside the CPU torch that vLLM's CPU build needs, their C++ operators do
not load, and importing torchvision then fails while registering Python kernels for two of them
(`operator torchvision::nms does not exist`). Declaring those two operator schemas first lets torchvision import, so
that the image and video processors of transformers (which use `torchvision.transforms`) work. The detection
operators themselves stay unavailable: nothing here uses them. A test-environment workaround for this CPU machine,
not part of rft_trl.
"""

import importlib.abc
import sys


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        for op in ("nms", "qnms"):
            try:
                torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass  # already declared (the C++ operators did load)
        return None  # the normal import continues


sys.meta_path.insert(0, _DeclareTorchvisionOps())
