"""Policy learning (L2A §4.3, App. E.1) with stable-baselines3 2.x: ``train_policy``.

TD3 defaults follow App. E.1 and the authors' settings, set explicitly because SB3 2.x's differ:
``MultiInputPolicy``, ``net_arch=[256, 128]``, γ_RL = 1, Gaussian action noise N(0, 0.1²),
buffer 1e5, batch 256, ``train_freq=(5, "step")``, ``gradient_steps=-1`` (as many gradient steps
as env steps collected). Steps: 80,000 (Krum), 40,000 (clipping median, geometric median,
FLTrust), 8,000 (the synthetic MLP). The policy learning rate is a parameter: the paper's 1e-7
does not move a freshly initialised TD3 policy within 8,000 steps, so the default is SB3's 1e-3
(``benchmarks/rl.py`` and the tests compare returns).

Replicas: TD3 steps ``num_envs`` episodes at once in one :class:`PoisoningVecEnv` (default: the
most of 8, 4, 2, 1 whose rollout divides the run and its chunks, :func:`default_num_envs`). SB3 2.x
counts ``train_freq=(5, "step")`` in VecEnv steps, so a rollout holds 5 × ``num_envs`` transitions,
and ``gradient_steps=-1`` then takes one gradient step per transition collected (5 × ``num_envs``):
App. E.1's ratio of one gradient step (batch 256) per env step is unchanged, only the simulator runs
B rounds per call and the policy acts on B observations at once. PPO keeps ``num_envs=1`` by default
(its rollout of ``n_steps`` per replica would grow with B). TD3's Adam is torch's fused kernel (the
same update, ≈ 5 % less time per gradient step on a CPU).

Threads: on a CPU the time goes into the gradient steps (≈ 0.27 GFLOP each: twin critics, targets
and the delayed actor at batch 256). Their matrices are small, so a second torch thread gains little
on an idle machine and, when other processes share the cores, makes each step many times slower
(the threads wait for each other): on a shared small CPU call ``torch.set_num_threads(1)`` first.

Training runs in chunks of ``checkpoint_every`` env steps (the same chunks with and without a
checkpoint directory, so both give the same policy). After each chunk a checkpoint is written
atomically: policy and optimizer weights, the replay buffer, the simulator's state, the counters
and every random stream SB3 uses. A killed run called again with the same arguments resumes from
the last checkpoint and ends with the policy an uninterrupted run would have given (bit-identical
on CPU with the same torch thread count).

Trust: checkpoints and saved policies are plain tensors and containers read with
``torch.load(weights_only=True)``; nothing is unpickled. (SB3's own ``.zip`` loader deserialises
cloudpickled objects and its replay-buffer loader is ``pickle``: both would run code from the file,
so they are not used.) Only load files this library wrote.

SB3 seeds Python's, NumPy's and torch's global generators; ``train_policy`` saves them on entry
and restores them on exit, so the caller's random streams are untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.policies import BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.vec_env import VecCheckNan
from stable_baselines3.td3.policies import MultiInputPolicy as TD3MultiInputPolicy

from .config import EnvConfig
from .env import policy_action_space
from .vecenv import PoisoningVecEnv

ALGOS = ("td3", "ppo")
FORMAT = "fedlib.rl.TrainedPolicy/1"
CHECKPOINT = "checkpoint.pt"
DEFAULT_LR = 1e-3
"""The policy learning rate default (the paper's 1e-7 is a parameter away: ``lr=1e-7``)."""


def default_steps(config: EnvConfig) -> int:
    """App. E.1's policy-learning budget: 8,000 synthetic, 80,000 Krum, 40,000 otherwise."""
    if config.model == "synthetic-mlp":
        return 8_000
    return 80_000 if config.aggregator in ("krum", "multi_krum") else 40_000


MAX_NUM_ENVS = 8
"""The most replicas :func:`default_num_envs` gives TD3 (5 × 8 divides chunks of 1,000 steps)."""


def default_num_envs(algo: str, steps: int, checkpoint_every: int,
                     train_freq: Any = (5, "step")) -> int:
    """TD3's replicas B (App. E.1's ratio kept): the largest B ≤ 8 with 5B | steps, chunk; PPO 1."""
    if algo != "td3":
        return 1
    if isinstance(train_freq, (tuple, list)):
        if len(train_freq) != 2 or train_freq[1] != "step":
            return 1                                   # episode-counted rollouts: one replica
        train_freq = train_freq[0]
    n = MAX_NUM_ENVS
    while n > 1 and (steps % (int(train_freq) * n) or checkpoint_every % (int(train_freq) * n)):
        n //= 2
    return n


def td3_defaults(lr: float, num_actions: int) -> dict[str, Any]:
    """TD3 hyper-parameters of App. E.1 (see the module docstring)."""
    return dict(learning_rate=lr, buffer_size=100_000, batch_size=256, gamma=1.0,
                train_freq=(5, "step"), gradient_steps=-1, learning_starts=100,
                action_noise=NormalActionNoise(np.zeros(num_actions), 0.1 * np.ones(num_actions)),
                policy_kwargs={"net_arch": [256, 128], "optimizer_kwargs": {"fused": True}})


def ppo_defaults(lr: float) -> dict[str, Any]:
    """PPO with γ_RL = 1 and the same network widths (the paper gives no PPO settings)."""
    return dict(learning_rate=lr, gamma=1.0, n_steps=2048, batch_size=64,
                policy_kwargs={"net_arch": [256, 128]})


# --------------------------------------------------------------------------- the policy
def _space_to_data(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Dict):
        return {"kind": "dict", "items": {k: _space_to_data(v) for k, v in space.spaces.items()}}
    if isinstance(space, gym.spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {"kind": "box", "low": torch.from_numpy(space.low.copy()),
                "high": torch.from_numpy(space.high.copy())}
    raise ValueError(f"unsupported space {space}")


def _space_from_data(data: dict[str, Any]) -> gym.Space:
    kind = data.get("kind")
    if kind == "dict":
        return gym.spaces.Dict({k: _space_from_data(v) for k, v in data["items"].items()})
    if kind == "discrete":
        return gym.spaces.Discrete(int(data["n"]))
    if kind == "box":
        return gym.spaces.Box(data["low"].numpy(), data["high"].numpy(), dtype=np.float32)
    raise ValueError(f"not a saved space: {kind!r}")


def _policy_class(algo: str) -> type[BasePolicy]:
    return TD3MultiInputPolicy if algo == "td3" else MultiInputActorCriticPolicy


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename (no torn files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass
class TrainedPolicy:
    """A learned attack policy: ``act(obs)`` gives its deterministic action in [−1, 1]^k."""

    policy: BasePolicy
    algo: str
    policy_kwargs: dict
    num_timesteps: int = 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The deterministic action for one observation (or a batch of them)."""
        action, _ = self.policy.predict(obs, deterministic=True)
        return action

    def state(self) -> dict[str, Any]:
        """The policy as tensors and plain data (algorithm, network arguments, spaces, weights)."""
        return {"format": FORMAT, "algo": self.algo, "policy_kwargs": dict(self.policy_kwargs),
                "num_timesteps": int(self.num_timesteps),
                "observation_space": _space_to_data(self.policy.observation_space),
                "action_space": _space_to_data(self.policy.action_space),
                "state_dict": {k: v.detach().clone()
                               for k, v in self.policy.state_dict().items()}}

    @classmethod
    def from_state(cls, data: Any, source: str = "state") -> "TrainedPolicy":
        """Inverse of :meth:`state`, without touching the global random state."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source} is not a policy saved by fedlib.rl")
        algo = data["algo"]
        if algo not in ALGOS:
            raise ValueError(f"unknown algorithm {algo!r} in {source}")
        with torch.random.fork_rng(devices=[]):                  # the network's initialisation
            policy = _policy_class(algo)(_space_from_data(data["observation_space"]),
                                         _space_from_data(data["action_space"]),
                                         lambda _: 0.0, **data["policy_kwargs"])
        policy.load_state_dict(data["state_dict"])
        policy.set_training_mode(False)
        return cls(policy, algo, dict(data["policy_kwargs"]), int(data["num_timesteps"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write the policy as plain tensors (atomic); read it back with :meth:`load`."""
        _atomic_save(self.state(), Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainedPolicy":
        """Read a policy written by :meth:`save` (``torch.load(weights_only=True)``)."""
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls.from_state(data, str(path))


# --------------------------------------------------------------------------- RNG and state
@contextlib.contextmanager
def _global_rng_guard() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global random state on exit."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()  # noqa: NPY002
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)  # noqa: NPY002
        torch.set_rng_state(th)


def _rng_state(model: Any) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002  (SB3 uses it)
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "action_space": model.action_space.np_random.bit_generator.state}


def _set_rng_state(model: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    legacy = (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    np.random.set_state(legacy)  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    model.action_space.np_random.bit_generator.state = state["action_space"]


def _tensors(value: Any) -> Any:
    """numpy arrays → tensors, recursively (for weights-only files)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {k: _tensors(v) for k, v in value.items()}
    return value


def _arrays(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    return value


_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _buffer_state(model: Any) -> dict[str, Any] | None:
    buf = getattr(model, "replay_buffer", None)
    if buf is None:
        return None
    upto = buf.buffer_size if buf.full else buf.pos

    def cut(a: Any) -> Any:
        return {k: cut(v) for k, v in a.items()} if isinstance(a, dict) else a[:upto]

    return {"pos": int(buf.pos), "full": bool(buf.full),
            **{f: _tensors(cut(getattr(buf, f))) for f in _BUFFER_FIELDS}}


def _set_buffer_state(model: Any, state: dict[str, Any] | None) -> None:
    buf = getattr(model, "replay_buffer", None)
    if buf is None or state is None:
        return
    buf.pos, buf.full = int(state["pos"]), bool(state["full"])
    for f in _BUFFER_FIELDS:
        dst, src = getattr(buf, f), _arrays(state[f])
        if isinstance(dst, dict):
            for k in dst:
                dst[k][: len(src[k])] = src[k]
        else:
            dst[: len(src)] = src


def _recursive_attr(obj: Any, name: str) -> Any:
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _fingerprint(config: EnvConfig, **settings: Any) -> str:
    """A digest of the config (tensors by content) and the training settings."""
    h = hashlib.sha256()
    for f in fields(config):
        v = getattr(config, f.name)
        flat = list(v) if isinstance(v, tuple) else [v]
        for item in flat:
            if isinstance(item, torch.Tensor):
                h.update(f"{f.name}:{item.dtype}:{tuple(item.shape)}".encode())
                h.update(item.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(f"{f.name}={item!r};".encode())
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()


def _checkpoint(model: Any, venv: PoisoningVecEnv, fingerprint: str) -> dict[str, Any]:
    state_dicts, _ = model._get_torch_save_params()
    return {"fingerprint": fingerprint, "num_timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates), "episode_num": int(model._episode_num),
            "weights": {n: _recursive_attr(model, n).state_dict() for n in state_dicts},
            "buffer": _buffer_state(model), "env": venv.get_state(),
            "last_obs": _tensors(model._last_obs),
            "last_episode_starts": _tensors(model._last_episode_starts),
            "rng": _rng_state(model)}


def _restore(model: Any, venv: PoisoningVecEnv, ckpt: dict[str, Any]) -> None:
    for name, sd in ckpt["weights"].items():
        _recursive_attr(model, name).load_state_dict(sd)
    model.num_timesteps = ckpt["num_timesteps"]
    model._n_updates = ckpt["n_updates"]
    model._episode_num = ckpt["episode_num"]
    _set_buffer_state(model, ckpt["buffer"])
    venv.set_state(ckpt["env"])
    model._last_obs = _arrays(ckpt["last_obs"])
    model._last_episode_starts = _arrays(ckpt["last_episode_starts"])
    _set_rng_state(model, ckpt["rng"])


class _Progress(BaseCallback):
    """tqdm over the whole training (every chunk), updated every env step."""

    def __init__(self, bar: Any):
        super().__init__()
        self.bar = bar

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True


# --------------------------------------------------------------------------- training
def train_policy(env_config: EnvConfig, algo: str = "td3", steps: int | None = None,
                 seed: int = 0, *, checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_every: int = 1000, lr: float = DEFAULT_LR,
                 num_envs: int | None = None,
                 progress: bool = True, callback: BaseCallback | None = None,
                 algo_kwargs: dict[str, Any] | None = None) -> TrainedPolicy:
    """Learn an attack policy in the simulator of ``env_config`` (L2A §4.3; App. E.1 settings).

    ``steps`` env steps (default :func:`default_steps`) with TD3 or PPO, ``lr`` the policy
    learning rate, ``num_envs`` replicas of one :class:`PoisoningVecEnv` (wrapped in
    ``VecCheckNan(raise_exception=True)``; default :func:`default_num_envs`, one gradient step per
    transition whatever B), ``algo_kwargs`` overriding the defaults. With
    ``checkpoint_dir`` a checkpoint is written every ``checkpoint_every`` steps and an existing
    one made by the same arguments is resumed (a different one raises ValueError).
    """
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    steps = default_steps(env_config) if steps is None else steps
    for name, v in (("steps", steps), ("checkpoint_every", checkpoint_every),
                    ("num_envs", 1 if num_envs is None else num_envs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    n_act = int(policy_action_space(env_config).shape[0])
    kwargs = td3_defaults(lr, n_act) if algo == "td3" else ppo_defaults(lr)
    kwargs.update(algo_kwargs or {})
    if num_envs is None:
        num_envs = default_num_envs(algo, steps, checkpoint_every,
                                    kwargs.get("train_freq", (5, "step")))
    unit = (kwargs["n_steps"] * num_envs if algo == "ppo"
            else (kwargs["train_freq"][0] if isinstance(kwargs["train_freq"], tuple)
                  else kwargs["train_freq"]) * num_envs)
    if checkpoint_every % unit or steps % unit:
        raise ValueError(f"steps and checkpoint_every must be multiples of {unit} "
                         f"({'n_steps' if algo == 'ppo' else 'train_freq'} × num_envs)")
    settings = {k: repr(v) for k, v in kwargs.items() if k != "action_noise"}
    fingerprint = _fingerprint(env_config, algo=algo, seed=seed, every=checkpoint_every,
                               num_envs=num_envs, **settings)
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT
    venv = PoisoningVecEnv(env_config, num_envs)
    with _global_rng_guard():
        env = VecCheckNan(venv, raise_exception=True)
        cls = TD3 if algo == "td3" else PPO
        model = cls("MultiInputPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
        if ckpt_path is not None and ckpt_path.exists():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if ckpt.get("fingerprint") != fingerprint:
                raise ValueError(f"{ckpt_path} was written by a different configuration; "
                                 "remove it or use another checkpoint_dir")
            _restore(model, venv, ckpt)
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=min(model.num_timesteps, steps), disable=not progress,
                   desc=f"{algo} policy", unit="step")
        callbacks = [_Progress(bar)] + ([callback] if callback is not None else [])
        try:
            while model.num_timesteps < steps:
                chunk = min(checkpoint_every, steps - model.num_timesteps)
                model.learn(chunk, callback=callbacks, reset_num_timesteps=model.num_timesteps == 0)
                if ckpt_path is not None:
                    _atomic_save(_checkpoint(model, venv, fingerprint), ckpt_path)
        finally:
            bar.close()
    return TrainedPolicy(model.policy, algo, dict(kwargs["policy_kwargs"]),
                         int(model.num_timesteps))
