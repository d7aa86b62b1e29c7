"""Self-play solvers on tabular games: exact updates, population-loss minimisation, finite samples.

Three ``mode``s run the same algorithm three ways:

- ``closed_form``: the exact policy update of each algorithm (below).
- ``loss``: each iteration minimises the algorithm's **population loss** from :mod:`inpo.objectives`
  over softmax logits (fp64, Newton's method with autograd): ordered pairs (y, y') drawn from π_t and
  labelled by P carry weight π_t(y)·π_t(y')·P(y ≻ y') as (chosen, rejected) — exactly one LLM training
  round without sampling noise. For INPO this reproduces the closed form (the paper's Lemma 5), for
  ONPO both regressions; the tests hold the two modes together.
- ``sampled``: ``prompts`` prompts per round (per context), ``samples`` = K responses each from π_t,
  Bernoulli preferences from P, pairs by tournament best/worst or at random, identical responses
  (ties) dropped, the objective's empirical loss minimised. Every oracle call is counted.

η conventions (the step size of the underlying mirror descent is what matters for the game):

=========  ====================================================  =================================
algorithm  closed-form update (normalised)                        ``eta`` means / objective
=========  ====================================================  =================================
inpo       π_ref^{τ/η}·π_t^{1−τ/η}·exp(P(y≻π_t)/η)               step 1/η; ``INPO(eta, ratio=τ/η)``
onpo       π'_{t+1} = π'_t·e^{η r_t},  π_{t+1} = π'_{t+1}·e^{η r_t} step η;  ``ONPO(eta)`` twice
           (= π_t·exp(η(2r_t − r_{t−1})), r_{−1} = r_0)
ipo        π_ref·exp(P(y≻π_t)/η)      (online IPO, ref fixed)    β = η;    ``IPO(beta=eta)``
dpo        π_t·exp(s_t/η), s_t = BT fit to pairs from π_t        β = η;    ``DPO(beta=eta)``, ref=π_t
sppo       π_t·exp(P(y≻π_t)/η)                                   step 1/η; ``SPPO(eta)``
dno        π_t·exp(P(y≻π_t)/η)   (idealised; sampled: DPO on      β = η;    ``DPO(beta=eta)``, ref=π_t
           win-rate-ranked best/worst pairs)
=========  ====================================================  =================================

``schedule="sqrt"`` shrinks the step like 1/√(t+1): η_t = η·√(t+1) where η divides (inpo, ipo, dpo,
sppo, dno) and η_t = η/√(t+1) where it multiplies (onpo). INPO keeps τ fixed, so its ratio is τ/η_t.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from inpo.objectives import DPO, INPO, IPO, ONPO, SPPO
from inpo.oracles.tournament import best_and_worst, label_pairs, tournament_queries

from .core import _logsumexp, check_policy, check_preference, uniform

__all__ = ["ALGORITHMS", "MODES", "PAIR_SELECTIONS", "Trajectory", "average_iterates", "solve", "run", "tournament_queries"]

ALGORITHMS = ("inpo", "onpo", "ipo", "dpo", "sppo", "dno")
MODES = ("closed_form", "loss", "sampled")
PAIR_SELECTIONS = ("best_worst", "random")
SCHEDULES = ("constant", "sqrt")
_MULTIPLIES = frozenset({"onpo"})  # η multiplies the win rate (step η); everywhere else it divides (step 1/η)


@dataclass
class Trajectory:
    """What :func:`run` returns. ``policies[t]`` is π_t (``[n]`` or ``[C, n]``), row 0 = π_0.
    ``queries[t]`` / ``pairs[t]`` / ``seconds[t]``: oracle queries, training examples (pairs, or
    sequences for SPPO) and wall time of iteration t (queries and pairs are 0 in the exact modes)."""

    policies: np.ndarray
    queries: np.ndarray
    pairs: np.ndarray
    seconds: np.ndarray
    config: dict = field(default_factory=dict)

    def average_policies(self) -> np.ndarray:
        """Time-averaged policies π̄_t = (1/t)·Σ_{s=1..t} π_s (row 0 = π_0), the iterate the O(1/√T)
        and O(1/T) duality-gap bounds are about."""
        return average_iterates(self.policies)


def average_iterates(policies: np.ndarray) -> np.ndarray:
    """π̄_0 = π_0, π̄_t = mean(π_1..π_t): the average of the policies the learner has played."""
    out = np.empty_like(policies)
    out[0] = policies[0]
    out[1:] = np.cumsum(policies[1:], axis=0) / np.arange(1, len(policies))[(slice(None),) + (None,) * (policies.ndim - 1)]
    return out


# --------------------------------------------------------------------------------------------- checks

def _check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    return float(eta)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value, choices) -> str:
    key = str(value).lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return key


def _positive_policy(pi, n, C, name) -> np.ndarray:
    arr = check_policy(pi, n, C, name=name)
    if float(arr.min()) <= 0:
        raise ValueError(f"{name} must be > 0 everywhere: a zero stays zero under every multiplicative update and "
                         f"makes the log-ratios of the losses infinite; got min {float(arr.min())}")
    return arr


# ------------------------------------------------------------------------------------- small helpers

def _normalise_log(z: np.ndarray) -> np.ndarray:
    return z - _logsumexp(z)[..., None]


def _eta_at(eta: float, t: int, schedule: str, algorithm: str) -> float:
    if schedule == "constant":
        return eta
    return eta / math.sqrt(t + 1) if algorithm in _MULTIPLIES else eta * math.sqrt(t + 1)


def _newton_step(H, g):
    """−H⁺g with Jacobi scaling. Every loss here is invariant to adding a constant to all logits (H·1 = 0)
    and responses of tiny mass give rows of tiny weight (π_t(y)·π_t(y') ~ 1e-20 late in a run): scaling
    by diag(H)^{-1/2} makes those rows O(1), so the pseudo-inverse drops only the true null directions
    (the constant, and responses no example touches, whose step is 0) and not the small-but-real ones."""
    lib = torch if isinstance(H, torch.Tensor) else np
    d = lib.diagonal(H)
    # rows 1e-30 below the largest carry no information a float64 loss can resolve: treat them as
    # untouched (step 0) rather than blow them up by 1/√d (a collapsed DPO run reaches weights ~1e-300)
    active = d > 1e-30 * float(d.max()) if float(d.max()) > 0 else d > 0
    scale = lib.where(active, 1.0 / lib.sqrt(lib.where(active, d, 1.0)), 0.0 * d)
    Hs = scale[:, None] * H * scale[None, :]
    if lib is torch:
        return -scale * (torch.linalg.pinv(Hs, rtol=1e-10, hermitian=True) @ (scale * g))
    return -scale * (np.linalg.pinv(Hs, rcond=1e-10, hermitian=True) @ (scale * g))


def _bt_fit(W: np.ndarray, *, iters: int = 100, s0: np.ndarray | None = None) -> np.ndarray:
    """Bradley–Terry maximum likelihood: argmax_s Σ W[i, j]·log σ(s_i − s_j) over (chosen i, rejected j)
    weights. Newton with a pseudo-inverse (s is defined up to a constant), warm-started at ``s0``.
    Returns s with mean 0."""
    n = W.shape[0]
    s = np.zeros(n) if s0 is None else np.array(s0, dtype=np.float64)
    I, J = np.nonzero(W)
    w = W[I, J]
    if w.size == 0:
        return s
    w = w / w.sum()  # the scale of the weights does not move the MLE; unit mass keeps pinv's cutoff meaningful
    # A separable sample (P(y ≻ y') = 1 on every observed pair, as in clipped games) has no finite MLE;
    # the ridge ε·|s|²/2 caps such scores near log(1/ε) ≈ 23 while moving well-posed fits by ~1e-10.
    eps = 1e-10

    def nll(x):
        return float(np.sum(w * np.logaddexp(0.0, -(x[I] - x[J]))) + 0.5 * eps * (x @ x))

    f = nll(s)
    for _ in range(iters):
        d = s[I] - s[J]
        q = np.exp(-np.logaddexp(0.0, d))  # σ(−d) without overflow
        g = np.zeros(n)
        np.add.at(g, I, -w * q)
        np.add.at(g, J, w * q)
        g += eps * s
        c = w * q * (1.0 - q)
        H = eps * np.eye(n)
        np.add.at(H, (I, I), c)
        np.add.at(H, (J, J), c)
        np.add.at(H, (I, J), -c)
        np.add.at(H, (J, I), -c)
        step = _newton_step(H, g)
        slope = float(g @ step)
        # Newton decrement below 1e-22 (unit total weight): no float64 change of the fit is left to make
        if slope > -1e-22 or np.abs(step).max() < 1e-13:
            break
        t = 1.0  # backtracking: pure Newton can overshoot on a logistic loss from a far start
        while nll(s + t * step) > f + 1e-4 * t * slope + 1e-15 * abs(f) and t > 1e-10:
            t *= 0.5
        s = s + t * step
        f = nll(s)
    return s - s.mean()


# ------------------------------------------------------------------------------ loss-mode minimiser

def _interleave(v: torch.Tensor, I: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """Per-response values → the objectives' interleaved layout: [v[I0], v[J0], v[I1], v[J1], ...]."""
    return torch.stack([v[I], v[J]], dim=-1).reshape(-1)


def _newton(loss_fn, theta0: torch.Tensor, *, max_iters: int = 100) -> torch.Tensor:
    """Minimise a smooth convex function of the logits. The pairwise losses see logits only through
    differences, so the Hessian is singular along the all-ones direction: a pseudo-inverse step moves
    nothing there (logits of responses no pair touches stay put). Quadratic losses (INPO, ONPO, IPO,
    SPPO up to its log-partition) converge in one or two steps; a backtracking line search guards the
    logistic ones (DPO)."""
    theta = theta0.clone()
    f = loss_fn(theta)
    grad_fn = torch.func.grad(loss_fn)
    hess_fn = torch.func.hessian(loss_fn)
    for _ in range(max_iters):
        g = grad_fn(theta)
        H = hess_fn(theta)
        step = _newton_step(H, g)
        slope = float(g @ step)
        if slope >= 0 or float(step.abs().max()) < 1e-12:
            break
        t = 1.0
        while True:
            cand = theta + t * step
            fc = loss_fn(cand)
            # the 1e-15·|f| slack accepts steps whose decrease is below the loss's rounding (tiny-mass rows)
            if float(fc) <= float(f) + 1e-4 * t * slope + 1e-15 * abs(float(f)) or t < 1e-10:
                break
            t *= 0.5
        theta, f = cand, fc
        if t * float(step.abs().max()) < 1e-11:
            break
    return theta


def _fit_pairwise(obj, W: np.ndarray, theta0: np.ndarray, *, ref=None, anchor=None, l2: float = 0.0) -> np.ndarray:
    """argmin_θ Σ_{i≠j} W[i, j]·obj.losses(...)_{(i chosen, j rejected)} / ΣW (+ l2·|θ − θ0|²) over
    logits θ; returns the normalised log-policy log_softmax(θ*). ``ref``/``anchor``: log-policies."""
    n = W.shape[0]
    I_np, J_np = np.nonzero(W * (~np.eye(n, dtype=bool)))
    if I_np.size == 0:
        return _normalise_log(theta0)
    I, J = torch.from_numpy(I_np), torch.from_numpy(J_np)
    w = torch.from_numpy(W[I_np, J_np])
    w = w / w.sum()
    ref_l = _interleave(torch.from_numpy(ref), I, J) if ref is not None else None
    anc_l = _interleave(torch.from_numpy(anchor), I, J) if anchor is not None else None
    th0 = torch.from_numpy(np.asarray(theta0, dtype=np.float64))

    def loss_fn(theta):
        logps = _interleave(torch.log_softmax(theta, -1), I, J)
        loss = (w * obj.losses(logps, ref_l, anc_l)).sum()
        if l2:
            loss = loss + l2 * ((theta - th0) ** 2).sum()
        return loss

    theta = _newton(loss_fn, th0)
    return _normalise_log(theta.numpy())


def _fit_sppo(obj: SPPO, v: np.ndarray, targets: np.ndarray, log_anchor: np.ndarray, theta0: np.ndarray) -> np.ndarray:
    """argmin_θ Σ_y v(y)·(log π_θ(y) − log π_t(y) − (P̂(y ≻ π_t) − ½)/η)² / Σv over logits θ."""
    keep = np.nonzero(v > 0)[0]
    if keep.size == 0:
        return _normalise_log(theta0)
    idx = torch.from_numpy(keep)
    w = torch.from_numpy(v[keep] / v[keep].sum())
    anc = torch.from_numpy(log_anchor[keep])
    tgt = torch.from_numpy(targets[keep])

    def loss_fn(theta):
        return (w * obj.losses(torch.log_softmax(theta, -1)[idx], anchor_logps=anc, targets=tgt)).sum()

    theta = _newton(loss_fn, torch.from_numpy(np.asarray(theta0, dtype=np.float64)))
    return _normalise_log(theta.numpy())


# ----------------------------------------------------------------------------------- the oracle side

class _Oracle:
    """Bernoulli preference oracle over one context's P; counts queries. Comparing a response with
    itself is a tie known without asking: it costs no query and picks a side by coin flip."""

    def __init__(self, P: np.ndarray, rng: np.random.Generator):
        self.P, self.rng, self.queries = P, rng, 0

    def first_wins(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        distinct = a != b
        self.queries += int(distinct.sum())
        return self.rng.random(a.shape) < np.where(distinct, self.P[a, b], 0.5)


def _sample_pairs(oracle: _Oracle, pi: np.ndarray, *, prompts: int, k: int, selection: str,
                  budget: int | None) -> np.ndarray:
    """Counts W[i, j] of (chosen i, rejected j) pairs for one context and one round."""
    n = pi.shape[0]
    rng = oracle.rng
    W = np.zeros((n, n))
    if selection == "random":
        m = budget if budget is not None else prompts
        a, b = rng.choice(n, size=m, p=pi), rng.choice(n, size=m, p=pi)
        a_wins = oracle.first_wins(a, b)
        keep = a != b  # ties dropped
        np.add.at(W, (np.where(a_wins, a, b)[keep], np.where(a_wins, b, a)[keep]), 1.0)
        return W
    m = max(budget // tournament_queries(k), 1) if budget is not None else prompts
    S = rng.choice(n, size=(m, k), p=pi)
    # the LM loop's tournament (inpo.oracles.tournament): best/worst brackets, then a fresh labelling comparison
    best, worst = best_and_worst(S, oracle.first_wins)
    chosen, rejected, kept = label_pairs(best, worst, lambda rows: oracle.first_wins(best[rows], worst[rows]),
                                         best == worst)
    np.add.at(W, (chosen[kept], rejected[kept]), 1.0)
    return W


def _sample_win_rates(oracle: _Oracle, pi: np.ndarray, *, prompts: int, k: int):
    """All K(K−1)/2 comparisons among K samples per prompt (SPPO / DNO). Returns samples [M, K] and
    the estimated win rate of each sample against the other K−1, P̂(y_k ≻ π_t)."""
    n = pi.shape[0]
    S = oracle.rng.choice(n, size=(prompts, k), p=pi)
    wins = np.zeros((prompts, k))
    for i in range(k):
        for j in range(i + 1, k):
            a_wins = oracle.first_wins(S[:, i], S[:, j]).astype(np.float64)
            wins[:, i] += a_wins
            wins[:, j] += 1.0 - a_wins
    return S, wins / (k - 1)


# -------------------------------------------------------------------------------------------- solve

def run(P, algorithm: str, *, iters: int, eta: float, tau: float = 0.0, pi_ref=None, pi0=None,
        mode: str = "closed_form", seed: int = 0, schedule: str = "constant", samples: int = 8,
        prompts: int = 64, pairs: str = "best_worst", queries: int | None = None) -> Trajectory:
    """Run ``iters`` self-play iterations of ``algorithm`` on game ``P`` and record the policies, the
    oracle queries, training examples and wall time per iteration. Arguments as in :func:`solve`;
    ``samples`` (K), ``prompts``, ``pairs`` and ``queries`` (an oracle budget per round and context
    that overrides ``prompts``: tournaments get budget // queries-per-tournament prompts, random pairs
    get ``queries`` pairs) apply to ``mode="sampled"``."""
    algorithm = _check_choice("algorithm", algorithm, ALGORITHMS)
    mode = _check_choice("mode", mode, MODES)
    schedule = _check_choice("schedule", schedule, SCHEDULES)
    pairs = _check_choice("pairs", pairs, PAIR_SELECTIONS)
    iters = _check_int("iters", iters, 0)
    eta = _check_eta(eta)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    tau = float(tau)
    if algorithm == "inpo" and tau > eta:
        raise ValueError(f"INPO needs 0 <= tau <= eta (ratio τ/η in [0, 1]), got tau={tau} > eta={eta}")
    if algorithm not in ("inpo",) and tau > 0:
        raise ValueError(f"tau is INPO's KL strength; {algorithm!r} has none (its own β/η is `eta`), got tau={tau}")
    if algorithm == "dno" and mode == "loss":
        raise ValueError("dno has no population loss (its pairs are ranked by estimated win rates); "
                         "use mode='closed_form' or mode='sampled'")
    samples = _check_int("samples", samples, 2)
    prompts = _check_int("prompts", prompts, 1)
    if queries is not None:
        queries = _check_int("queries", queries, 1)
    P3 = check_preference(P)
    C, n = P3.shape[0], P3.shape[-1]
    ref = uniform(n, C) if pi_ref is None else _positive_policy(pi_ref, n, C, "pi_ref")
    start = ref if pi0 is None else _positive_policy(pi0, n, C, "pi0")
    log_ref = np.log(ref)
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    if mode != "closed_form":
        torch.set_num_threads(1)  # n×n problems: intra-op threads only add sync cost (≈7× here); restored below
    try:
        return _iterate(P, P3, algorithm, mode, iters, eta, tau, schedule, seed, samples, prompts, pairs, queries,
                        start, log_ref, rng)
    finally:
        torch.set_num_threads(threads)


def _iterate(P, P3, algorithm, mode, iters, eta, tau, schedule, seed, samples, prompts, pairs, queries, start,
             log_ref, rng) -> Trajectory:
    C, n = P3.shape[0], P3.shape[-1]
    log_pi = np.log(start)
    log_aux = log_pi.copy()  # ONPO's auxiliary chain π'; iterative DPO's last BT scores
    policies = np.empty((iters + 1, C, n))
    policies[0] = start
    n_queries = np.zeros(iters, dtype=np.int64)
    n_pairs = np.zeros(iters, dtype=np.int64)
    seconds = np.zeros(iters)
    for t in range(iters):
        t0 = time.perf_counter()
        eta_t = _eta_at(eta, t, schedule, algorithm)
        pi = np.exp(log_pi)
        new_log_pi = np.empty_like(log_pi)
        for c in range(C):
            if mode == "closed_form":
                new_log_pi[c], log_aux[c] = _closed_form_step(algorithm, P3[c], pi[c], log_pi[c], log_aux[c],
                                                              log_ref[c], eta_t, tau, t)
            else:
                oracle = _Oracle(P3[c], rng) if mode == "sampled" else None
                new_log_pi[c], log_aux[c], used = _loss_step(
                    algorithm, P3[c], pi[c], log_pi[c], log_aux[c], log_ref[c], eta_t, tau, t, oracle,
                    samples=samples, prompts=prompts, pairs=pairs, budget=queries)
                n_pairs[t] += used
                n_queries[t] += oracle.queries if oracle is not None else 0
        log_pi = new_log_pi
        policies[t + 1] = np.exp(log_pi)
        seconds[t] = time.perf_counter() - t0
    squeeze = np.ndim(P) == 2
    config = dict(algorithm=algorithm, mode=mode, iters=iters, eta=eta, tau=tau, schedule=schedule, seed=seed,
                  samples=samples, prompts=prompts, pairs=pairs, queries=queries)
    return Trajectory(policies[:, 0] if squeeze else policies, n_queries, n_pairs, seconds, config)


def solve(P, algorithm: str, *, iters: int, eta: float, tau: float = 0.0, pi_ref=None, pi0=None,
          mode: str = "closed_form", seed: int = 0, **kwargs) -> np.ndarray:
    """Self-play on the tabular game ``P`` ([n, n] or [C, n, n]); returns the policy after each
    iteration, ``[iters + 1, n]`` (``[iters + 1, C, n]`` with contexts), row 0 = ``pi0`` (default
    ``pi_ref``, default uniform).

    ``algorithm`` ∈ {"inpo", "onpo", "ipo", "dpo", "sppo", "dno"} with the η conventions of this
    module's table; ``tau`` is INPO's KL strength (0 ≤ τ ≤ η). ``mode`` ∈ {"closed_form", "loss",
    "sampled"}; ``seed`` drives the sampled mode. Extra keywords (``schedule``, ``samples``,
    ``prompts``, ``pairs``, ``queries``) go to :func:`run`, which also returns query counts and timings.
    """
    return run(P, algorithm, iters=iters, eta=eta, tau=tau, pi_ref=pi_ref, pi0=pi0, mode=mode, seed=seed,
               **kwargs).policies


def _closed_form_step(algorithm, P, pi, log_pi, log_aux, log_ref, eta, tau, t):
    """One exact update on one context; returns (new log π, new log π')."""
    r = P @ pi  # r_t(y) = P(y ≻ π_t)
    if algorithm == "inpo":
        ratio = tau / eta
        return _normalise_log(ratio * log_ref + (1 - ratio) * log_pi + r / eta), log_aux
    if algorithm == "onpo":
        # r_{-1} = r_0 makes π'_1 = π_0, so the first round skips the auxiliary update
        aux = log_pi.copy() if t == 0 else _normalise_log(log_aux + eta * r)
        return _normalise_log(aux + eta * r), aux
    if algorithm == "ipo":
        return _normalise_log(log_ref + r / eta), log_aux
    if algorithm == "dpo":
        W = pi[:, None] * pi[None, :] * P
        np.fill_diagonal(W, 0.0)
        # warm start at last round's scores (kept in the unused auxiliary slot): π_t moves little per round
        scores = _bt_fit(W, s0=log_aux if t > 0 else None)
        return _normalise_log(log_pi + scores / eta), scores
    # sppo, dno (idealised): soft policy iteration on the win rate
    return _normalise_log(log_pi + r / eta), log_aux


def _loss_step(algorithm, P, pi, log_pi, log_aux, log_ref, eta, tau, t, oracle, *, samples, prompts, pairs, budget):
    """One iteration by loss minimisation on one context, on population weights (``oracle`` None) or
    on a finite sample drawn through ``oracle``. Returns (new log π, new log π', examples used)."""
    n = P.shape[0]
    if algorithm in ("sppo", "dno"):
        if oracle is None:  # population SPPO: every y weighted by π_t(y), target P(y ≻ π_t)
            v, targets, W, used = pi, P @ pi, None, 0
        else:
            S, rates = _sample_win_rates(oracle, pi, prompts=prompts, k=samples)
            if algorithm == "sppo":
                v = np.bincount(S.ravel(), minlength=n).astype(np.float64)
                # the loss is quadratic per sequence: repeated y's collapse onto their mean target
                targets = np.bincount(S.ravel(), weights=rates.ravel(), minlength=n) / np.maximum(v, 1)
                used = S.size
            else:
                rows = np.arange(S.shape[0])
                hi, lo = rates.argmax(1), rates.argmin(1)
                best, worst = S[rows, hi], S[rows, lo]
                keep = (rates[rows, hi] > rates[rows, lo]) & (best != worst)
                W = np.zeros((n, n))
                np.add.at(W, (best[keep], worst[keep]), 1.0)
                used = int(keep.sum())
        if algorithm == "sppo":
            return _fit_sppo(SPPO(eta=eta), v, targets, log_pi, log_pi), log_aux, used
        return _fit_pairwise(DPO(beta=eta), W, log_pi, ref=log_pi, l2=_map_l2(used)), log_aux, used

    if oracle is None:
        W = pi[:, None] * pi[None, :] * P
        np.fill_diagonal(W, 0.0)
        used = 0
    else:
        W = _sample_pairs(oracle, pi, prompts=prompts, k=samples, selection=pairs, budget=budget)
        used = int(W.sum())
    if algorithm == "inpo":
        ratio = tau / eta
        obj = INPO(eta=eta, ratio=ratio)
        return _fit_pairwise(obj, W, log_pi, ref=log_ref if ratio > 0 else None,
                             anchor=log_pi if ratio < 1 else None), log_aux, used
    if algorithm == "onpo":
        obj = ONPO(eta=eta)
        aux = log_pi.copy() if t == 0 else _fit_pairwise(obj, W, log_aux, anchor=log_aux)
        return _fit_pairwise(obj, W, aux, anchor=aux), aux, used
    if algorithm == "ipo":
        return _fit_pairwise(IPO(beta=eta), W, log_pi, ref=log_ref), log_aux, used
    # dpo: ref = π_t each round
    return _fit_pairwise(DPO(beta=eta), W, log_pi, ref=log_pi, l2=_map_l2(used) if oracle is not None else 0.0), \
        log_aux, used


def _map_l2(examples: int) -> float:
    """Finite samples are often separable, and a logistic loss (DPO, DNO) then has no minimiser: its
    logits run off to infinity. A unit-variance Gaussian prior on the logit change, θ − θ_t ~ N(0, 1),
    i.e. + |θ − θ_t|²/(2m) on the mean loss over m examples, keeps the fit finite and vanishes as
    m → ∞ (the population limit is untouched)."""
    return 0.5 / max(examples, 1)
