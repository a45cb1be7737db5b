"""Shared test setup: offline hubs, deterministic seeds, the repository root on sys.path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

# The tests run tiny tensors, where one intra-op thread is fastest and immune to oversubscription (DDP tests start
# two processes on two cores). Override with BOKEHDEPTH_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("BOKEHDEPTH_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def stage2_stack_calls(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Records (stack, K) of every Stage2Module forward call that is given a stack (``monkeypatch.undo()`` stops it)."""
    from lightning_modules.stage2 import Stage2Module

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    forward = Stage2Module.forward

    def spy(self, image, stack=None, K_px_m=None):
        if stack is not None:
            calls.append((stack.detach().clone(), K_px_m.detach().clone()))
        return forward(self, image, stack, K_px_m)

    monkeypatch.setattr(Stage2Module, "forward", spy)
    return calls
