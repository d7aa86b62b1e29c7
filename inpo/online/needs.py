"""What the loop must do for an objective -- the only place in the loop that knows objectives by name, until the
objectives declare it themselves (issue 22: ``Objective.samples``, ``aux_chain``, ``side_inputs``)."""

from __future__ import annotations

import torch

from inpo.objectives import Objective


def scored_samples(objective: Objective) -> bool:
    """Whether the loop samples K responses per prompt with win-rate targets (SPPO) instead of pairs."""
    return objective.name == "sppo"


def aux_chain(objective: Objective) -> bool:
    """Whether the loop also trains an auxiliary chain π' (ONPO), whose log-probs are the source ``aux``."""
    return objective.name == "onpo"


def side_inputs(objective: Objective, logps: dict, data: list[dict]) -> dict:
    """The objective's side inputs from the cached log-prob sources (``ref``: π_ref, ``iterate``: π_t, ``aux``:
    π'_t) and the training records (SPPO's targets)."""
    name = objective.name
    if name == "inpo":
        side = {"ref_logps": logps["ref"] if objective.needs_ref else None,
                "anchor_logps": logps["iterate"] if objective.needs_anchor else None}
    elif name == "ipo":
        side = {"ref_logps": logps["ref"]}
    elif name == "dpo":
        side = {"ref_logps": logps["iterate"]}  # iterative DPO: the reference moves to π_t
    elif name == "sppo":
        side = {"anchor_logps": logps["iterate"],
                "targets": torch.tensor([r["target"] for r in data], dtype=torch.float32)}
    elif name == "onpo":
        side = {"anchor_logps": logps["aux"]}
    else:  # pragma: no cover - config validation lists the objectives
        raise ValueError(name)
    return side
