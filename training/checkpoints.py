"""Per-epoch checkpoints for the hand-written training loops (`finetune`, `distill`).

An epoch's checkpoint is its weights and the optimizer's state (moments and step count, so the
learning-rate schedule resumes too) under the epoch's own names; `state.json`, replaced
atomically, names the last complete one and the settings it was made with. A resumed run
with other settings is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from core.model_io import write_json_atomic


class EpochCheckpoints:
    def __init__(self, folder: Path, settings: dict[str, str]) -> None:
        self.folder = folder
        self.settings = settings
        self.state_path = folder / "state.json"

    def last_epoch(self) -> int:
        """The last finished epoch (0: none); refuses a run in progress with other settings."""
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"epoch": 0}
        if state["epoch"] and state.get("settings") != self.settings:
            saved = state.get("settings") or {}
            changed = [k for k in {**saved, **self.settings} if saved.get(k) != self.settings.get(k)]
            raise DataError(f"{self.folder}: a run with other settings ({', '.join(changed)}) is in progress;"
                            " use the same settings to resume, or --restart")
        return int(state["epoch"])

    def restore(self, model: Any, optimizer: Any, epoch: int) -> None:
        """Load epoch `epoch`'s weights and optimizer state (the optimizer must be built)."""
        model.load_weights(self.folder / f"epoch_{epoch}.weights.h5")
        with np.load(self.folder / f"epoch_{epoch}.optimizer.npz") as saved:
            for k, variable in enumerate(optimizer.variables):
                variable.assign(saved[f"v{k}"])
        print(f"resuming after epoch {epoch} from {self.folder}", flush=True)

    def save(self, model: Any, optimizer: Any, epoch: int, keep_weights: int = 1) -> None:
        """Write epoch `epoch`, then drop the previous optimizer state and all but the last
        `keep_weights` epochs' weights (a run that averages the last N epochs keeps N)."""
        model.save_weights(self.folder / f"epoch_{epoch}.weights.h5")
        np.savez(self.folder / f"epoch_{epoch}.optimizer.npz",
                 **{f"v{k}": v.numpy() for k, v in enumerate(optimizer.variables)})
        write_json_atomic(self.state_path, {"epoch": epoch, "settings": self.settings})
        (self.folder / f"epoch_{epoch - 1}.optimizer.npz").unlink(missing_ok=True)
        (self.folder / f"epoch_{epoch - max(keep_weights, 1)}.weights.h5").unlink(missing_ok=True)
