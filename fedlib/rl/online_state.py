"""Checkpoint state of L2A's online RL attack (§4.2–4.4): the policy as tensors and plain data.

:meth:`fedlib.rl.online.OnlineRL.state_dict` stores what the attack has learned so far — the
distribution learner's state (:meth:`fedlib.inversion.DistributionLearner.state_dict`), the
current policy (this module), the schedule counters and the log — as tensors, numbers, strings,
lists and dicts, so that :mod:`fedlib.checkpoint` writes it into a run's checkpoint and reads it
back with ``torch.load(weights_only=True)``. A policy is stored in the format
:meth:`TrainedPolicy.save <fedlib.rl.train.TrainedPolicy.save>` writes (algorithm, network
arguments, spaces, weights, step count): that is all a refresh carries over, since each refresh
starts a fresh learner warm-started from the previous policy's weights
(:func:`fedlib.rl.online.train_refresh`).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ATTACK_FIELDS", "SETUP_FIELDS", "attack_state", "load_attack_state", "policy_state",
           "policy_from_state"]

ATTACK_FIELDS = ("trained", "log", "refreshes", "_root", "_root_error", "_ready", "_calls",
                 "_next_round")
"""OnlineRL's counters and logs: the policy steps so far, the executed rounds, the refreshes,
FLTrust's root set as the attackers know it and the schedule's position."""
SETUP_FIELDS = ("classes", "model_name", "rule_name", "params", "counts", "ctx_lr", "ctx_batch",
                "ctx_steps", "theta0", "x_real", "y_real")
"""What OnlineRL's first call reads from the federation (K, w, M, η, B, θ₀, the m samples)."""


def policy_state(policy: Any) -> dict[str, Any]:
    """A :class:`fedlib.rl.train.TrainedPolicy` as tensors and plain data (its saved format)."""
    from .train import TrainedPolicy
    if not isinstance(policy, TrainedPolicy):
        raise TypeError(f"cannot store a policy of type {type(policy).__name__} in a checkpoint "
                        "(only fedlib.rl.train.TrainedPolicy)")
    return policy.state()


def policy_from_state(state: dict[str, Any]) -> Any:
    """Inverse of :func:`policy_state`, without touching the global random state."""
    from .train import TrainedPolicy
    return TrainedPolicy.from_state(state, "the checkpoint's policy")


def attack_state(attack: Any) -> dict[str, Any]:
    """An :class:`~fedlib.rl.online.OnlineRL`'s state: counters, log, setup, learner, policy."""
    state: dict[str, Any] = {k: getattr(attack, k) for k in ATTACK_FIELDS}
    if attack._ready:
        state.update({k: getattr(attack, k) for k in SETUP_FIELDS})
    learner = attack.learner
    state["learner"] = None if learner is None else learner.state_dict()
    state["learner_device"] = None if learner is None else str(learner.x_real.device)
    state["policy"] = None if attack.policy is None else policy_state(attack.policy)
    return state


def load_attack_state(attack: Any, state: dict[str, Any]) -> None:
    """Put :func:`attack_state` onto an attack built from the same config (not its simulator);
    the learner is rebuilt without training its denoiser, the global random state untouched."""
    for k in ATTACK_FIELDS + (SETUP_FIELDS if state["_ready"] else ()):
        setattr(attack, k, state[k])
    attack.learner = None
    if state["learner"] is not None:
        with torch.random.fork_rng(devices=[]):                  # the networks' initialisation
            attack.learner = attack._new_learner(torch.device(state["learner_device"]),
                                                 denoiser=None)
        attack.learner.load_state_dict(state["learner"])
    attack.policy = None if state["policy"] is None else policy_from_state(state["policy"])
