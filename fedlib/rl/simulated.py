"""What the attackers simulate of the real federation (L2A §3, white-box): its model and rule.

The simulator (:class:`fedlib.rl.EnvConfig`) must train the federation's model under its rule;
:func:`infer_model` recognises the model from the flat parameter layout, :func:`simulated_rule`
maps the engine's rule object to the simulator's rule name and parameters.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

from .. import models
from ..attacks.base import aggregator_name
from ..flat import ParamSpec
from .config import COUNT_RULES, SUPPORTED_RULES


def infer_model(spec: ParamSpec, sample_shape: tuple[int, ...], width: float = 1.0) -> str:
    """The ``fedlib.models`` name whose parameters at ``width`` match ``spec`` (else ValueError)."""
    classes = int(spec.shapes[-1][0])
    for name in models.available():
        if tuple(models.input_shape(name)) != tuple(sample_shape):
            continue
        try:
            built = ParamSpec.of(models.build(name, num_classes=classes, width=width))
        except ValueError:
            continue
        if built == spec:
            return name
    raise ValueError("the RL attack cannot tell which fedlib model the federation trains; pass "
                     "attack_params model=<fedlib.models name> and width=<the run's width>")


def simulated_rule(aggregator: Any, override: Optional[str] = None,
                   override_params: Optional[dict] = None) -> tuple[str, dict]:
    """The rule and parameters the attackers simulate (white-box, L2A §3; module docstring)."""
    if override is not None:
        return str(override).lower(), dict(override_params or {})
    name = aggregator_name(aggregator)
    name = "geometric_median" if name == "rfa" else name
    if name not in SUPPORTED_RULES:
        warnings.warn(f"the RL attack's simulator does not model rule {name!r}; it simulates the "
                      "mean instead (pass attack_params rule=... to choose)", RuntimeWarning,
                      stacklevel=3)
        return "mean", {}
    params = dict(getattr(getattr(aggregator, "rule", None), "params", None) or {})
    if name in COUNT_RULES and "f" not in params:
        params["f"] = "sampled"                       # built with f="per_call"
    if name == "multi_krum" and params.get("m") is None:
        params.pop("m", None)
    if name == "fltrust":
        params = {}
    return name, params
