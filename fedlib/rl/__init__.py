"""L2A's attackers' simulator and policy learning (Li et al., NeurIPS 2022, §4.1, §4.3, App. E.1).

``EnvConfig`` describes the simulated federation; ``PoisoningEnv`` (gymnasium) and
``PoisoningVecEnv`` (stable-baselines3, B replicas batched) are its MDP; ``train_policy`` learns
an attack policy with TD3 or PPO and returns a ``TrainedPolicy``; ``PolicyAttack`` executes a
trained policy as the attack of a real run.
"""

from .config import PRESETS, EnvConfig, approximate_root, synthetic_env_config
from .env import PoisoningEnv, observation_space, policy_action_space
from .vecenv import PoisoningVecEnv

__all__ = ["EnvConfig", "PRESETS", "approximate_root", "synthetic_env_config", "PoisoningEnv",
           "PoisoningVecEnv", "observation_space", "policy_action_space", "train_policy",
           "TrainedPolicy", "default_steps", "PolicyAttack"]


def __getattr__(name: str):
    if name in ("train_policy", "TrainedPolicy", "default_steps"):
        from . import train
        return getattr(train, name)
    if name == "PolicyAttack":
        from .policy_attack import PolicyAttack
        return PolicyAttack
    raise AttributeError(name)
