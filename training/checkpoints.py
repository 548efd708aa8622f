"""Resumable training checkpoints: LoRA, optimizer, schedule and RNG, written so that a crash at any
moment leaves one whole checkpoint (torch.save, read back with weights_only=True)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from qadapter.core.errors import InvalidData

CHECKPOINT_FILE = "state.pt"
RUN_FILE = "run.json"


class Checkpoints:
    """One resumable checkpoint directory per output (torch.save, read back with weights_only=True)."""

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path = path
        self.identity = identity

    def save(self, model: PeftModel, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> None:
        """Write the new checkpoint beside the old one, then swap: a crash leaves one of the two whole."""
        staging = self.path.with_name(self.path.name + ".tmp")
        previous = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        state = {
            "step": step,
            "lora": get_peft_model_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(state, staging / CHECKPOINT_FILE)
        (staging / RUN_FILE).write_text(json.dumps(self.identity, indent=2))
        shutil.rmtree(previous, ignore_errors=True)
        if self.path.exists():
            self.path.rename(previous)
        staging.rename(self.path)
        shutil.rmtree(previous, ignore_errors=True)

    def restore(self, model: PeftModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load the checkpoint into the run and return the step to continue from."""
        if not (self.path / CHECKPOINT_FILE).is_file() and self.path.with_name(self.path.name + ".old").is_dir():
            self.path.with_name(self.path.name + ".old").rename(self.path)  # a crash came mid-swap
        if not (self.path / CHECKPOINT_FILE).is_file():
            raise InvalidData(f"--resume: no checkpoint at {str(self.path)!r}; start without --resume")
        saved = json.loads((self.path / RUN_FILE).read_text())
        if saved != json.loads(json.dumps(self.identity)):
            raise InvalidData(
                f"--resume: the checkpoint at {str(self.path)!r} was made with other data or hyper-parameters; "
                "rerun with the same flags, or delete the checkpoint to start over"
            )
        state = torch.load(self.path / CHECKPOINT_FILE, weights_only=True)
        set_peft_model_state_dict(model, state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["step"])

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
