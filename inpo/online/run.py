"""What every phase of a run reads: the config, the run directory's context (metrics, global step, printing), this
process's shard, the models, the objective, the data source and the run's sampler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inpo.objectives import Objective
from inpo.online.models import Models
from inpo.online.shard import Shard
from inpo.train.config import TrainConfig
from inpo.train.loop import RunContext


@dataclass
class OnlineRun:
    run: RunContext
    shard: Shard
    models: Models
    objective: Objective
    tokenizer: object
    source: object = None  # inpo.online.sources.OnlineSource | PairsSource
    sampler: object = None  # inpo.online.generate.RunSampler, for the length of the loop

    @property
    def cfg(self) -> TrainConfig:
        return self.run.cfg

    def iter_dir(self, t: int) -> Path:
        """``<out>/iter_<t>``: everything iteration ``t`` produces (recorded in the run's manifest: ``--overwrite``
        deletes what a run recorded and nothing else)."""
        return self.run.own(f"iter_{t:03d}")
