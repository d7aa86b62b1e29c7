"""Tabular games: validity, exact duality gap, Lemma 5 (population loss = closed form), convergence
claims, sampled mode's oracle accounting. Small n and few iterations: the whole file runs in seconds."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import inpo.games.solvers as solvers
from inpo.games import (average_iterates, best_response, bradley_terry, check_preference, cyclic_game, duality_gap,
                        gap_curve, make_game, mixture, random_intransitive, regularized_nash, rock_paper_scissors, run,
                        solve, tournament_queries, win_rates)
from inpo.objectives import INPO, ONPO
from inpo.oracles.tournament import best_and_worst, label_pairs


def _pi(n, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(n))


GAMES = {
    "rps": lambda: rock_paper_scissors(),
    "random": lambda: random_intransitive(6, seed=3),
    "bt": lambda: bradley_terry(5, seed=4),
    "mixture-contexts": lambda: make_game("mixture", n=4, seed=5, contexts=3),
}


def _start(P, seed=7):
    n = P.shape[-1]
    return np.stack([_pi(n, seed + c) for c in range(P.shape[0])]) if P.ndim == 3 else _pi(n, seed)


# ----------------------------------------------------------------------------------------- games

@pytest.mark.parametrize("name", ["rps", "cyclic", "random", "bt", "mixture"])
def test_builtin_games_are_valid_preferences(name):
    P = make_game(name, n=7, seed=1)
    assert np.allclose(P + P.T, 1.0) and P.min() >= 0 and P.max() <= 1
    assert np.allclose(np.diag(P), 0.5)
    Pc = make_game(name, n=7, seed=1, contexts=4)
    assert Pc.shape == (4,) + P.shape
    check_preference(Pc)


def test_games_are_seeded():
    assert np.array_equal(make_game("random", n=6, seed=2), make_game("random", n=6, seed=2))
    assert not np.allclose(make_game("random", n=6, seed=2), make_game("random", n=6, seed=3))
    assert not np.allclose(make_game("bt", n=6, seed=2), make_game("bt", n=6, seed=3))


def test_rps_orientation_and_mixture():
    P = rock_paper_scissors()
    assert P[1, 0] == 1 and P[0, 2] == 1 and P[2, 1] == 1  # paper ≻ rock, rock ≻ scissors, scissors ≻ paper
    M = mixture([P, bradley_terry(3, scores=[0.0, 1.0, 2.0])], [0.25, 0.75])
    assert np.allclose(M, 0.25 * P + 0.75 * bradley_terry(3, scores=[0.0, 1.0, 2.0]))


# ---------------------------------------------------------------------------------- duality gap

def _J(P, p, q):
    return p @ P @ q


def test_gap_matches_definition_at_tau_zero():
    """max_π' J(π', π) − min_π' J(π, π') over the simplex = over vertices; = 2·max_y P(y ≻ π) − 1."""
    P = random_intransitive(6, seed=9)
    pi = _pi(6, 1)
    eye = np.eye(6)
    by_definition = max(_J(P, e, pi) for e in eye) - min(_J(P, pi, e) for e in eye)
    assert duality_gap(P, pi) == pytest.approx(by_definition, abs=1e-14)
    assert duality_gap(P, pi) == pytest.approx(2 * win_rates(P, pi).max() - 1, abs=1e-14)
    assert duality_gap(rock_paper_scissors(), np.ones(3) / 3) == pytest.approx(0.0, abs=1e-15)
    assert duality_gap(rock_paper_scissors(), np.array([1.0, 0, 0])) == pytest.approx(1.0)  # paper beats it surely


def test_regularised_gap_matches_definition_and_vanishes_at_regularised_nash():
    P, tau, ref = random_intransitive(5, seed=2), 0.2, _pi(5, 3)
    pi = _pi(5, 4)

    def kl(p):
        return float(np.sum(p * np.log(p / ref)))

    def Jt(p, q):
        return _J(P, p, q) - tau * kl(p) + tau * kl(q)

    br = best_response(P, pi, tau=tau, pi_ref=ref)
    gap_def = Jt(br, pi) - Jt(pi, br)  # by symmetry the minimiser of J_τ(π, ·) is the same softmax
    assert duality_gap(P, pi, tau=tau, pi_ref=ref) == pytest.approx(gap_def, abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(200):  # the softmax really is the best response
        q = rng.dirichlet(np.ones(5))
        assert Jt(q, pi) <= Jt(br, pi) + 1e-12
    star = regularized_nash(P, tau=tau, pi_ref=ref)
    assert duality_gap(P, star, tau=tau, pi_ref=ref) < 1e-11
    assert duality_gap(P, pi, tau=tau, pi_ref=ref) > 1e-3


def test_gap_curve_and_contexts():
    P = make_game("random", n=5, seed=1, contexts=3)
    pol = solve(P, "inpo", iters=6, eta=1.0, tau=0.2, pi0=_start(P))
    assert pol.shape == (7, 3, 5)
    assert np.allclose(gap_curve(P, pol), [duality_gap(P, p) for p in pol], atol=1e-14)
    per_ctx = np.mean([duality_gap(P[c], pol[-1, c]) for c in range(3)])
    assert duality_gap(P, pol[-1]) == pytest.approx(per_ctx, abs=1e-14)  # uniform prompts: mean over contexts


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("P, match", [
    (np.array([[0.5, 0.7], [0.4, 0.5]]), "P \\+ Pᵀ = 1"),
    (np.array([[0.5, 1.2], [-0.2, 0.5]]), "\\[0, 1\\]"),
    (np.ones((2, 3)) * 0.5, "shape \\(2, 3\\)"),
])
def test_invalid_preference_matrix(P, match):
    with pytest.raises(ValueError, match=match):
        duality_gap(P, np.ones(P.shape[-1]) / P.shape[-1])


def test_invalid_inputs_name_the_value():
    P = rock_paper_scissors()
    with pytest.raises(ValueError, match="sum to 1"):
        duality_gap(P, np.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        duality_gap(P, np.ones(4) / 4)
    with pytest.raises(ValueError, match="eta must be .* got -1"):
        solve(P, "inpo", iters=2, eta=-1)
    with pytest.raises(ValueError, match="eta must be .* got 0"):
        solve(P, "inpo", iters=2, eta=0)
    with pytest.raises(ValueError, match="unknown algorithm 'nash'"):
        solve(P, "nash", iters=2, eta=1.0)
    with pytest.raises(ValueError, match="unknown mode 'exact'"):
        solve(P, "inpo", iters=2, eta=1.0, mode="exact")
    with pytest.raises(ValueError, match="tau=2.0 > eta=1.0"):
        solve(P, "inpo", iters=2, eta=1.0, tau=2.0)
    with pytest.raises(ValueError, match="pi0 must be > 0"):
        solve(P, "inpo", iters=2, eta=1.0, pi0=np.array([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="unknown game 'chess'"):
        make_game("chess")
    with pytest.raises(ValueError, match="unknown pairs 'all'"):
        solve(P, "inpo", iters=1, eta=1.0, mode="sampled", pairs="all")
    with pytest.raises(ValueError, match="tau must be"):
        duality_gap(P, np.ones(3) / 3, tau=-0.1)


# -------------------------------------------------------------------------------------- Lemma 5

@pytest.mark.parametrize("game", list(GAMES))
@pytest.mark.parametrize("eta, ratio", list(itertools.product([0.05, 0.5, 2.0], [0.0, 1 / 3, 1.0])))
def test_lemma5_inpo_population_loss_equals_closed_form(game, eta, ratio):
    P = GAMES[game]()
    pi0, ref = _start(P, 7), _start(P, 11)
    kw = dict(iters=3, eta=eta, tau=ratio * eta, pi_ref=ref, pi0=pi0)
    exact = solve(P, "inpo", mode="closed_form", **kw)
    loss = solve(P, "inpo", mode="loss", **kw)
    assert np.abs(exact[1:] - exact[:-1]).max() > 1e-3  # the update really moves π
    np.testing.assert_allclose(loss, exact, atol=1e-8, rtol=0)


@pytest.mark.parametrize("game", list(GAMES))
def test_onpo_both_regressions_equal_closed_form(game):
    P = GAMES[game]()
    pi0 = _start(P)
    for eta in (0.2, 1.5):
        exact = solve(P, "onpo", iters=4, eta=eta, pi0=pi0)
        np.testing.assert_allclose(solve(P, "onpo", iters=4, eta=eta, pi0=pi0, mode="loss"), exact, atol=1e-8, rtol=0)


def test_onpo_closed_form_is_optimistic_update():
    """π_{t+1} ∝ π_t·exp(η(2r_t − r_{t−1})) with r_{−1} = r_0."""
    P, eta = random_intransitive(5, seed=8), 0.7
    pol = solve(P, "onpo", iters=5, eta=eta, pi0=_pi(5))
    r = [P @ p for p in pol]
    for t in range(5):
        prev = r[t - 1] if t > 0 else r[0]
        want = pol[t] * np.exp(eta * (2 * r[t] - prev))
        np.testing.assert_allclose(pol[t + 1], want / want.sum(), atol=1e-13)


@pytest.mark.parametrize("algorithm, eta", [("ipo", 0.5), ("ipo", 2.0), ("dpo", 2.0), ("dpo", 5.0)])
def test_baseline_population_losses_equal_their_closed_forms(algorithm, eta):
    """IPO: π_ref·exp(r/β). DPO: the BT maximum-likelihood fit (an independent Newton in numpy)."""
    for P in (random_intransitive(6, seed=3), rock_paper_scissors(), bradley_terry(5, seed=1)):
        kw = dict(iters=3, eta=eta, pi0=_pi(P.shape[0], 5), pi_ref=_pi(P.shape[0], 6))
        np.testing.assert_allclose(solve(P, algorithm, mode="loss", **kw), solve(P, algorithm, **kw), atol=1e-7, rtol=0)


def test_sppo_loss_close_to_closed_form_up_to_log_partition():
    P, pi0 = random_intransitive(6, seed=3), _pi(6, 5)
    errs = [np.abs(solve(P, "sppo", iters=3, eta=e, pi0=pi0, mode="loss") - solve(P, "sppo", iters=3, eta=e, pi0=pi0)).max()
            for e in (2.0, 10.0)]
    assert errs[0] < 5e-3 and errs[1] < errs[0] / 10  # the residual is the dropped log-partition, O(1/η²)


def test_special_cases():
    P, pi0, ref = random_intransitive(6, seed=2), _pi(6, 1), _pi(6, 2)
    # online IPO = INPO with ratio 1; SPPO's exact update = INPO with τ = 0
    np.testing.assert_allclose(solve(P, "ipo", iters=4, eta=0.8, pi0=pi0, pi_ref=ref),
                               solve(P, "inpo", iters=4, eta=0.8, tau=0.8, pi0=pi0, pi_ref=ref), atol=1e-14)
    np.testing.assert_allclose(solve(P, "sppo", iters=4, eta=0.8, pi0=pi0),
                               solve(P, "inpo", iters=4, eta=0.8, pi0=pi0), atol=1e-14)


def _broken(kind):
    @dataclasses.dataclass(frozen=True)
    class Broken(INPO):
        def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None):
            h = self.margin(logps, ref_logps, anchor_logps)
            target = {"sign": -1.0 / (2 * self.eta), "eta_not_inverse": self.eta, "no_half": 1.0 / self.eta}[kind]
            return (h - target) ** 2
    return Broken


@pytest.mark.parametrize("kind", ["sign", "eta_not_inverse", "no_half"])
def test_lemma5_check_catches_sign_and_scale_slips(monkeypatch, kind):
    """The Lemma-5 test above must fail on a slip in the loss: swap in a broken INPO and it does."""
    P, pi0 = random_intransitive(6, seed=3), _pi(6, 7)
    kw = dict(iters=2, eta=0.5, tau=0.5 / 3, pi0=pi0, pi_ref=pi0)
    exact = solve(P, "inpo", **kw)
    monkeypatch.setattr(solvers, "INPO", _broken(kind))
    assert np.abs(solve(P, "inpo", mode="loss", **kw) - exact).max() > 1e-2


def test_lemma5_check_catches_swapped_chosen_rejected(monkeypatch):
    P, pi0 = random_intransitive(6, seed=3), _pi(6, 7)
    exact = solve(P, "onpo", iters=2, eta=1.0, pi0=pi0)

    @dataclasses.dataclass(frozen=True)
    class Swapped(ONPO):
        def losses(self, logps, ref_logps=None, anchor_logps=None, targets=None):
            return (-self.margin(logps, ref_logps, anchor_logps) - self.eta / 2) ** 2

    monkeypatch.setattr(solvers, "ONPO", Swapped)
    assert np.abs(solve(P, "onpo", iters=2, eta=1.0, pi0=pi0, mode="loss") - exact).max() > 1e-2


# --------------------------------------------------------------------------------- convergence

def _slope(g, t0, t1):
    return np.log(g[t1] / g[t0]) / np.log(t1 / t0)


def test_inpo_average_gap_falls_and_onpo_is_faster():
    T = 400
    # interior-Nash cyclic games make the rates visible; on games whose Nash policy sits on a face the
    # transient (mass leaking off dominated responses) dominates at small T — see bench/results/games
    for P in (rock_paper_scissors(), cyclic_game(5)):
        pi0 = _pi(P.shape[0], 3)
        g_inpo = gap_curve(P, average_iterates(solve(P, "inpo", iters=T, eta=2.0, pi0=pi0, pi_ref=pi0)))
        g_onpo = gap_curve(P, average_iterates(solve(P, "onpo", iters=T, eta=0.5, pi0=pi0)))  # same step 0.5
        assert _slope(g_inpo, 40, T) < -0.3  # at least T^(-1/2)-ish, not stalled
        assert _slope(g_onpo, 40, T) < -0.8  # ~T^(-1)
        assert _slope(g_onpo, 40, T) < _slope(g_inpo, 40, T)
        assert g_onpo[T] < g_inpo[T]


def test_inpo_last_iterate_converges_to_regularised_nash_when_tau_positive():
    P, ref = random_intransitive(6, seed=1), _pi(6, 2)
    eta, tau = 1.0, 1.0 / 3
    pol = solve(P, "inpo", iters=300, eta=eta, tau=tau, pi0=_pi(6, 4), pi_ref=ref)
    star = regularized_nash(P, tau=tau, pi_ref=ref)
    assert np.abs(pol[-1] - star).max() < 1e-10
    assert duality_gap(P, pol[-1], tau=tau, pi_ref=ref) < 1e-12
    last0 = solve(P, "inpo", iters=300, eta=eta, pi0=_pi(6, 4), pi_ref=ref)[-50:]  # τ = 0: keeps moving
    assert np.abs(np.diff(last0, axis=0)).max() > 1e-4


def test_dpo_misses_rps_nash_while_inpo_reaches_it():
    """No BT score expresses a 3-cycle: iterative DPO's last iterate ends near a vertex (gap ≈ 1) while
    INPO with τ > 0 and π_ref uniform converges to the uniform Nash policy."""
    P, pi0 = rock_paper_scissors(), np.array([0.6, 0.3, 0.1])
    dpo = solve(P, "dpo", iters=200, eta=2.0, pi0=pi0)
    inpo = solve(P, "inpo", iters=200, eta=2.0, tau=2.0 / 3, pi0=pi0)
    assert duality_gap(P, dpo[-1]) > 0.9
    assert duality_gap(P, inpo[-1]) < 1e-8
    bt = solvers._bt_fit(np.where(np.eye(3, dtype=bool), 0.0, P / 9))
    assert np.ptp(bt) < 1e-8  # the best BT fit at uniform sees no preference at all


def test_sqrt_schedule_changes_the_step():
    P, pi0 = random_intransitive(5, seed=1), _pi(5)
    a = solve(P, "inpo", iters=3, eta=1.0, pi0=pi0, schedule="sqrt")
    r = [P @ p for p in a]
    want = a[2] * np.exp(r[2] / (1.0 * np.sqrt(3)))
    np.testing.assert_allclose(a[3], want / want.sum(), atol=1e-13)


# -------------------------------------------------------------------------------------- sampled

@pytest.mark.parametrize("k", [2, 3, 7, 8])
def test_tournament_finds_best_and_worst_with_counted_queries(k):
    """The games play the LM loop's tournament (inpo.oracles.tournament): brackets find the best and the worst
    under a strict order, and the fresh labelling comparison makes K − 1 + ⌈K/2⌉ queries in all (11 at K = 8)."""
    n = 12
    P = (np.arange(n)[:, None] < np.arange(n)[None, :]).astype(float)  # a strict order: lower index wins surely
    np.fill_diagonal(P, 0.5)
    rng = np.random.default_rng(0)
    S = np.stack([rng.permutation(n)[:k] for _ in range(50)])  # distinct responses per prompt
    oracle = solvers._Oracle(P, rng)
    best, worst = best_and_worst(S, oracle.first_wins)
    assert np.array_equal(best, S.min(1)) and np.array_equal(worst, S.max(1))
    chosen, rejected, kept = label_pairs(best, worst, lambda r: oracle.first_wins(best[r], worst[r]), best == worst)
    assert kept.all() and np.array_equal(chosen, best) and np.array_equal(rejected, worst)
    assert oracle.queries == 50 * tournament_queries(k) == 50 * (k - 1 + (k + 1) // 2)
    # _sample_pairs plays exactly this: same queries per tournament (duplicates drawn from π cost nothing)
    oracle = solvers._Oracle(P, rng)
    W = solvers._sample_pairs(oracle, np.full(n, 1.0 / n), prompts=50, k=k, selection="best_worst", budget=None)
    assert 0 < W.sum() <= 50 and np.all(np.triu(W, 1) == W) and oracle.queries <= 50 * tournament_queries(k)


def test_sampled_mode_counts_queries_and_drops_ties():
    P = random_intransitive(3, seed=0)
    tr = run(P, "inpo", iters=3, eta=1.0, mode="sampled", pairs="random", queries=500, seed=1)
    assert np.all(tr.queries < 500) and np.all(tr.queries > 200)  # identical draws (≈1/3 here) cost nothing
    assert np.array_equal(tr.queries, tr.pairs)  # a random pair is one query, ties dropped
    tr = run(P, "sppo", iters=2, eta=1.0, mode="sampled", samples=4, prompts=10, seed=1)
    assert np.all(tr.queries <= 10 * 6) and np.all(tr.pairs == 40)
    assert tr.policies.shape == (3, 3) and tr.seconds.shape == (2,)


def test_sampled_mode_is_seeded_and_approaches_population_update():
    P, pi0 = random_intransitive(5, seed=2), _pi(5, 3)
    kw = dict(iters=2, eta=1.0, pi0=pi0, mode="sampled", pairs="random", queries=40_000)
    a, b = solve(P, "inpo", seed=4, **kw), solve(P, "inpo", seed=4, **kw)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, solve(P, "inpo", seed=5, **kw))
    exact = solve(P, "inpo", iters=2, eta=1.0, pi0=pi0)
    assert 0.5 * np.abs(a - exact).sum(-1).max() < 0.03  # random pairs are Lemma 5's population, sampled


@pytest.mark.parametrize("algorithm", ["inpo", "onpo", "ipo", "dpo", "sppo", "dno"])
def test_every_algorithm_runs_sampled(algorithm):
    P = make_game("random", n=5, seed=1, contexts=2)
    tr = run(P, algorithm, iters=2, eta=2.0, mode="sampled", prompts=8, seed=0)
    assert tr.policies.shape == (3, 2, 5)
    assert np.allclose(tr.policies.sum(-1), 1) and np.all(np.isfinite(tr.policies))
    assert tr.queries.sum() > 0


def test_dno_has_no_population_loss():
    with pytest.raises(ValueError, match="dno has no population loss"):
        solve(rock_paper_scissors(), "dno", iters=1, eta=1.0, mode="loss")


def test_cyclic_game_nash_is_uniform():
    P = cyclic_game(5)
    assert duality_gap(P, np.ones(5) / 5) == pytest.approx(0.0, abs=1e-15)
