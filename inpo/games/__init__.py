"""Exact tabular preference games: the testbed that proves the objectives (shared/ALGORITHMS.md).

``from inpo.games import make_game, duality_gap, solve`` — see :mod:`inpo.games.core` (games, duality
gap) and :mod:`inpo.games.solvers` (closed-form / population-loss / sampled self-play).
"""

from .core import (GAMES, best_response, bradley_terry, check_policy, check_preference, cyclic_game, duality_gap, gap_curve,
                   make_game, mixture, random_intransitive, regularized_nash, rock_paper_scissors, style_game, uniform,
                   win_rates, STYLE_CLASSES)
from .solvers import (ALGORITHMS, MODES, ONPO_STARTS, PAIR_SELECTIONS, Trajectory, average_iterates, first_step_kl,
                      realised_step, run, solve, tournament_queries)

__all__ = [
    "GAMES", "ALGORITHMS", "MODES", "PAIR_SELECTIONS", "Trajectory",
    "best_response", "bradley_terry", "check_policy", "check_preference", "cyclic_game", "duality_gap", "gap_curve",
    "make_game", "mixture", "random_intransitive", "regularized_nash", "rock_paper_scissors", "style_game",
    "STYLE_CLASSES", "uniform",
    "win_rates", "average_iterates", "run", "solve", "tournament_queries", "ONPO_STARTS", "first_step_kl",
    "realised_step",
]
