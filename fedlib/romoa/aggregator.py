"""The Romoa aggregation rule as an engine aggregator (Algorithm 2, server side).

See the package docstring (``fedlib.romoa``) for the readings and their justification.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from . import factors as fac
from . import meanshift as ms
from . import similarity as sim

READINGS = {
    "literal": dict(selection="parameter", elementwise="sign", pearson="printed",
                    generating="signed"),
    "calibrated": dict(selection="path", elementwise="cosine", pearson="centered",
                       generating="cluster_penalty"),
}
READING_BANDWIDTH = {"literal": "auto", "calibrated": "robust"}
CHOICES = dict(selection=("parameter", "path"), elementwise=("sign", "cosine"),
               pearson=("printed", "centered"), generating=fac.GENERATING,
               centroid=("majority", "own"), kernel=ms.KERNELS, layers=("module", "tensor"))


def _indices(mask: Tensor) -> Tensor:
    """The sorted indices of a (d,) bool mask (NumPy's is about twice as fast on a CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _columns(x: Tensor, idx: Tensor) -> Tensor:
    """x[:, idx] for an (n, d) matrix (NumPy's gather is about twice as fast on a CPU)."""
    if x.device.type == "cpu":
        return torch.from_numpy(x.numpy()[:, idx.numpy()])
    return x.index_select(1, idx)


class Romoa:
    """Romoa (Mao et al., 2021): lookahead similarity → mean shift → sanitizing factors.

    ``Romoa(reading="literal" | "calibrated", **options)`` is an engine aggregator:
    ``observe(updates, ctx)`` on lookahead iterations and ``__call__(updates, ctx)`` at sync
    points both update the factors F (Algorithm 2, lines 16–19); ``__call__`` also returns
    Σᵢ Fⁱ ⊙ Δᵢ (line 21). In the synchronous protocol every call is a sync point.

    ``reading`` picks a *preset* of the named options below (:data:`READINGS` and
    :data:`READING_BANDWIDTH`): ``"literal"`` = every equation as printed; ``"calibrated"`` =
    four measurement calibrations (``selection="path"``, ``elementwise="cosine"``,
    ``pearson="centered"``, ``bandwidth="robust"``) plus the cluster penalty
    (``generating="cluster_penalty"``), which replaces the printed Eqs. 8–10. An option passed
    explicitly overrides the preset's. :meth:`preview` answers "what would this iteration
    give?" without changing any state (for white-box attacks).

    Options (``None`` = the preset's choice; see ``fedlib.romoa`` for why):

    * ``selection_ratio`` — the share each participant selects in Eq. 4 (paper: γ = 1/n;
      ``None`` = 1/n). The paper's *moving rate* γ is the engine's ``moving_rate``.
    * ``beta`` — the residual rate β of Eq. 11 (paper: 1/2).
    * ``selection`` — rank by |θᵢ_t'| (``"parameter"``, literal) or by |θᵢ_t' − θ̄_t|
      (``"path"``, calibrated).
    * ``elementwise`` — Eq. 5 per coordinate, sign(a)·sign(ā) (``"sign"``, literal), or the
      cosine over the selected set (``"cosine"``, calibrated).
    * ``pearson`` — Eq. 7 as printed, cos/(std·std) (``"printed"``), or Pearson's r
      (``"centered"``).
    * ``generating`` — Eqs. 8–10 as m − c (``"signed"``), as 0 inside the majority cluster
      and −max(0, |m − c| − h)/h outside (``"cluster_penalty"``, calibrated; h the bandwidth), or
      as −max(0, |m − c| − κs)/s with s = 1.4826·MAD (``"standardized"``; ``tolerance`` is
      κ, default 2).
    * ``centroid`` — c_w of the majority cluster (``"majority"``, both readings) or of the
      participant's own cluster (``"own"``).
    * ``bandwidth`` — ``"auto"`` (scikit-learn's quantile rule, literal), ``"robust"`` (at
      least 3 robust standard deviations of the participants' values, calibrated) or a float;
      ``kernel`` (``"flat"`` or ``"gaussian"``) — the mean shift.
    * ``layers`` — ``"module"`` (a module's weight and bias form one layer, ``spec.layers``)
      or ``"tensor"`` (each parameter tensor is a layer).
    * ``report_samples`` — coordinates sampled (evenly spaced) for :meth:`report`.

    Attributes: ``weights`` (n,) — each participant's mean factor over coordinates (sums
    to 1; 0 for excluded rows); ``factors`` — the current F (n, d), a read-only view of the
    state (n·d floats: 135 MB for the Romoa MNIST CNN with n = 10); ``iteration`` — how many
    update matrices were seen; ``last_seconds`` — the server time of the last call.
    :meth:`report` returns plain lists/floats for plots (see there); :meth:`reset` forgets all.

    Non-finite policy: a row holding NaN/±Inf is excluded for that iteration with a
    ``RuntimeWarning``: its factor is 0 (F of the other rows is renormalised so that every
    column still sums to 1) and it takes no part in the measurements or the aggregate. All
    rows non-finite → ``ValueError``.

    Without a ``RoundContext`` the whole vector is one layer and θ_ref = 0 (so the literal
    selection ranks |Δᵢ|). If the participants change between calls (other ``client_ids``),
    known participants keep their factors, new ones start at 1/n, and columns are
    renormalised.
    """

    name = "romoa"

    def __init__(self, reading: str = "literal", *, selection_ratio: Optional[float] = None,
                 beta: float = 0.5, bandwidth: Optional[ms.Bandwidth] = None, kernel: str = "flat",
                 centroid: str = "majority", tolerance: float = 2.0, layers: str = "module",
                 selection: Optional[str] = None, elementwise: Optional[str] = None,
                 pearson: Optional[str] = None, generating: Optional[str] = None,
                 report_samples: int = 64):
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {tuple(READINGS)}, got {reading!r}")
        opts = dict(READINGS[reading])
        for key, val in dict(selection=selection, elementwise=elementwise, pearson=pearson,
                             generating=generating).items():
            if val is not None:
                opts[key] = val
        opts.update(centroid=centroid, kernel=kernel, layers=layers)
        for key, val in opts.items():
            if val not in CHOICES[key]:
                raise ValueError(f"{key} must be one of {CHOICES[key]}, got {val!r}")
        if selection_ratio is not None and not (isinstance(selection_ratio, (int, float))
                                                and 0 < selection_ratio <= 1):
            raise ValueError(f"selection_ratio must be in (0, 1] or None, got {selection_ratio!r}")
        if not isinstance(beta, (int, float)) or not 0 < beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {beta!r}")
        if bandwidth is None:
            bandwidth = READING_BANDWIDTH[reading]
        if isinstance(bandwidth, str):
            if bandwidth not in ms.BANDWIDTH_RULES:
                raise ValueError(f"bandwidth must be one of {ms.BANDWIDTH_RULES} or a positive "
                                 f"number, got {bandwidth!r}")
        elif isinstance(bandwidth, bool) or not (isinstance(bandwidth, (int, float))
                                                 and bandwidth > 0):
            raise ValueError(f"bandwidth must be one of {ms.BANDWIDTH_RULES} or a positive number, "
                             f"got {bandwidth!r}")
        if not isinstance(tolerance, (int, float)) or not tolerance >= 0:
            raise ValueError(f"tolerance must be ≥ 0, got {tolerance!r}")
        if not isinstance(report_samples, int) or report_samples < 0:
            raise ValueError(f"report_samples must be an integer ≥ 0, got {report_samples!r}")
        self.reading = reading
        self.options = opts
        self.selection_ratio = selection_ratio
        self.beta = float(beta)
        self.bandwidth = bandwidth
        self.tolerance = float(tolerance)
        self.report_samples = report_samples
        self.reset()

    # ------------------------------------------------------------------ state
    _STATE = ("_F", "_ids", "_last", "_pending", "_weights", "iteration", "last_seconds",
              "_f_layer", "_clock")
    """Everything an iteration changes (:meth:`preview` restores it)."""

    def reset(self) -> None:
        """Forget all history: F back to 1/n at the next call."""
        self._F: Optional[Tensor] = None
        self._ids: Optional[list[int]] = None
        self._last: dict[str, Any] = {}
        self._pending: Optional[dict] = None
        self._weights: Optional[Tensor] = None
        self.iteration = 0
        self.last_seconds = 0.0
        self._f_layer: Optional[Tensor] = None
        self._profile: Optional[dict[str, float]] = None
        self._clock = 0.0

    @property
    def factors(self) -> Optional[Tensor]:
        """The current sanitizing factors F (n, d) (a view of the state: do not modify)."""
        return self._F

    @property
    def weights(self) -> Optional[Tensor]:
        """Each participant's mean factor over coordinates (n,), summing to 1 (one read of F,
        formed on first access after an iteration)."""
        if self._weights is None and self._F is not None:
            w = self._F.mean(dim=1)
            self._weights = w / w.sum()
        return self._weights

    def __repr__(self) -> str:
        return f"Romoa(reading={self.reading!r}, {self.options}, bandwidth={self.bandwidth!r})"

    # ------------------------------------------------------------- interface
    def __call__(self, updates: Tensor, ctx: Any = None) -> Tensor:
        """Update F with this iteration's uploads, then return Σᵢ Fⁱ ⊙ Δᵢ (Algorithm 2)."""
        start = time.perf_counter()
        x, keep = self._update(updates, ctx)
        F = self._F
        out = fac.sanitized_aggregation(x, F) if bool(keep.all()) \
            else fac.sanitized_aggregation(x[keep], F[keep])
        self._clock = time.perf_counter()
        self.last_seconds = self._clock - start
        return out

    def observe(self, updates: Tensor, ctx: Any = None) -> None:
        """A lookahead iteration between syncs: update F only (Algorithm 2, lines 16–19)."""
        self._update(updates, ctx)

    def preview(self, updates: Tensor, ctx: Any = None) -> tuple[Tensor, Tensor]:
        """What this iteration would give, (Σᵢ Fⁱ ⊙ Δᵢ, weights), leaving the state untouched.

        Algorithm 2 lines 16–21 on a copy of F: for white-box attacks that query the server's
        rule with candidate uploads (``fedlib.attacks.RomoaAdaptive``). Every attribute —
        F, ``iteration``, ``weights``, :meth:`report` — is as before the call.
        """
        saved = {k: getattr(self, k) for k in self._STATE}
        saved["_last"] = dict(self._last)
        saved["_profile"] = None if self._profile is None else dict(self._profile)
        if self._F is not None:
            self._F = self._F.clone()                          # _step updates F in place
        try:
            out = self(updates, ctx)
            w = self.weights.clone()
        finally:
            for k, v in saved.items():
                setattr(self, k, v)
        return out, w

    # -------------------------------------------------------------- internals
    @staticmethod
    def _check(updates: Tensor) -> Tensor:
        if not isinstance(updates, Tensor):
            raise ValueError("romoa: updates must be a torch.Tensor (n, d), "
                             f"got {type(updates).__name__}")
        if updates.dim() != 2 or updates.shape[0] == 0 or updates.shape[1] == 0:
            raise ValueError("romoa: updates must be a non-empty (n, d) matrix, "
                             f"got {tuple(updates.shape)}")
        if not updates.is_floating_point():
            raise ValueError(f"romoa: updates must be floating point, got {updates.dtype}")
        return updates.detach()

    def _layers(self, d: int, ctx: Any) -> list[slice]:
        spec = getattr(ctx, "spec", None)
        if spec is None:
            return [slice(0, d)]
        if spec.dim != d:
            raise ValueError(f"romoa: ctx.spec has dimension {spec.dim}, updates have {d}")
        if self.options["layers"] == "module":
            return [sl for _, sl in spec.layers]
        return list(spec.slices.values())

    def _state(self, n: int, d: int, ids: Optional[list[int]], like: Tensor) -> Tensor:
        F = self._F
        fresh = F is None or F.shape[1] != d or F.dtype != like.dtype or F.device != like.device
        if fresh:
            if F is not None:
                warnings.warn("romoa: the update dimension/dtype/device changed; factors reset",
                              RuntimeWarning, stacklevel=4)
            self._ids = ids
            return fac.initial_factor(n, d, like.dtype, like.device)
        if ids is not None and self._ids is not None and ids != self._ids:
            old = {c: r for r, c in enumerate(self._ids)}
            rows = [old.get(c, -1) for c in ids]
            newF = fac.initial_factor(n, d, like.dtype, like.device)
            for r, src in enumerate(rows):
                if src >= 0:
                    newF[r] = F[src]
            newF /= newF.sum(0, keepdim=True)
            self._ids = ids
            return newF
        if F.shape[0] != n:
            warnings.warn(f"romoa: {F.shape[0]} participants before, {n} now, and no client_ids "
                          "to match them: factors reset to 1/n", RuntimeWarning, stacklevel=4)
            self._ids = ids
            return fac.initial_factor(n, d, like.dtype, like.device)
        self._ids = ids if ids is not None else self._ids
        return F

    def _update(self, updates: Tensor, ctx: Any) -> tuple[Tensor, Tensor]:
        start = time.perf_counter()
        x = self._check(updates)
        n, d = x.shape
        layers = self._layers(d, ctx)
        theta = getattr(ctx, "theta", None)
        if theta is not None:
            if theta.shape != (d,):
                raise ValueError(f"romoa: ctx.theta must have shape ({d},), "
                                 f"got {tuple(theta.shape)}")
            theta = theta.detach().to(x.device, x.dtype)
        ids = getattr(ctx, "client_ids", None)
        ids = None if ids is None else [int(c) for c in torch.as_tensor(ids).tolist()]
        if ids is not None and len(ids) != n:
            raise ValueError(f"romoa: {len(ids)} client_ids for {n} updates")
        # A column sum is finite only if every entry is (NaN/Inf propagate): the lookahead
        # aggregate doubles as the finiteness check; rows are inspected only if it fails.
        self._clock = time.perf_counter()
        scanned = self._scan(x, theta, layers)
        keep = torch.ones(n, dtype=torch.bool, device=x.device)
        if not bool(torch.isfinite(scanned[0].sum())):         # Inf − Inf = NaN: any is caught
            keep = torch.isfinite(x).all(dim=1)
        F = self._state(n, d, ids, x)
        n_ok = int(keep.sum())
        if n_ok == n:
            self._step(x, layers, F, scanned)
        else:
            warnings.warn(f"romoa: excluded {n - n_ok} of {n} updates containing NaN/Inf "
                          "(factor 0 this iteration)", RuntimeWarning, stacklevel=3)
            if n_ok == 0:
                raise ValueError(f"romoa: all {n} updates contain NaN/Inf")
            Fk = F[keep]
            col = Fk.sum(0, keepdim=True)
            Fk = torch.where(col > 0, Fk / col.clamp_min(1e-30), torch.full_like(Fk, 1.0 / n_ok))
            xk = x[keep]
            self._step(xk, layers, Fk, self._scan(xk, theta, layers))
            F = torch.zeros_like(F)
            F[keep] = Fk
            self._last["kept"] = keep.tolist()
        self._F = F
        self._weights = None                                   # formed when asked for
        self.iteration += 1
        self._last.update(round=getattr(ctx, "round", None), sync=getattr(ctx, "sync", True),
                          n=n, d=d)
        self.last_seconds = time.perf_counter() - start
        return x, keep

    def _cluster(self, values: Tensor) -> ms.Clusters:
        """Mean shift of (G, n) values: one group per layer (or one for Eq. 5's cosine)."""
        return ms.cluster(values, self.bandwidth, self.options["kernel"])

    def _generate(self, m: Tensor, cl: ms.Clusters) -> Tensor:
        """Eqs. 8–10 for a (n, G) measurement whose G groups were clustered in ``cl``."""
        c = cl.centroid[None, :] if self.options["centroid"] == "majority" else cl.modes.T
        member = (cl.modes - cl.centroid[:, None]).abs().T <= cl.bandwidth[None, :]
        return fac.generating_function(m, c, self.options["generating"], scale=cl.scale[None, :],
                                       tolerance=self.tolerance, member=member,
                                       bandwidth=cl.bandwidth[None, :])

    def _tick(self, name: str) -> None:
        if self._profile is not None:
            now = time.perf_counter()
            self._profile[name] = self._profile.get(name, 0.0) + now - self._clock
            self._clock = now

    def _scan(self, x: Tensor, theta: Optional[Tensor],
              layers: list[slice]) -> tuple[Tensor, Tensor, sim.LayerMoments]:
        """The lookahead aggregate ā (−path, Fig. 3), Eq. 4's U and the Eqs. 5–7 moments."""
        o = self.options
        ratio = self.selection_ratio if self.selection_ratio is not None else 1.0 / x.shape[0]
        ref = theta if o["selection"] == "parameter" else None
        return sim.lookahead_scan(x, layers, ratio, ref,
                                  with_selected=o["elementwise"] == "cosine")

    def _step(self, x: Tensor, layers: list[slice], F: Tensor,
              scanned: tuple[Tensor, Tensor, sim.LayerMoments]) -> None:
        """One iteration of Algorithm 2's server (lines 16–19) on finite rows; F in place."""
        n, d = x.shape
        o = self.options
        beta = self.beta
        agg, selected, mom = scanned
        idx = _indices(selected)
        self._tick("lookahead mean, selection and moments")
        l_cos = sim.layer_cosine(mom)                           # (n, L) float64
        l_pear = sim.layer_pearson(mom, centered=o["pearson"] == "centered")
        cl_cos, cl_pear = self._cluster(l_cos.T), self._cluster(l_pear.T)
        f_layer = torch.minimum(self._generate(l_cos, cl_cos), self._generate(l_pear, cl_pear))
        g_off = torch.clamp(f_layer, max=0.0)                  # Eq. 8 "0 otherwise" off U
        self._f_layer = f_layer
        starts = torch.tensor([sl.start for sl in layers], device=x.device)
        sm_off = torch.softmax(g_off, dim=0).to(x.dtype)       # (n, L)
        self._tick("layer mean shift")
        # Eq. 11 off the selected set: F ← (1 − β)F + β·softmax, per layer (one pass).
        for j, sl in enumerate(layers):
            part = F[:, sl]
            part.lerp_(sm_off[:, j:j + 1].expand_as(part), beta)
        self._tick("factor update")
        signs = None
        if o["elementwise"] == "sign":
            # Literal Eq. 5 on U: signs (n, |U|); its per-parameter mean shift is the table
            # lookup of the column's count pattern (n₊, n₋).
            table = ms.sign_pattern_table(n, self.bandwidth, o["kernel"])
            # U's indices are sorted, so each layer's columns form one range of them
            bounds = torch.searchsorted(idx, starts).tolist() + [idx.numel()]
            off = beta * sm_off
            signs = _columns(x, idx).sign_().mul_(_columns(agg[None, :], idx)[0].sign_())
            total = signs.sum(0)
            nonzero = signs.abs().sum(0)
            # pattern id n₊(n + 1) + n₋ with n₊ = (nz + tot)/2, n₋ = (nz − tot)/2
            pid = torch.add(nonzero * (0.5 * (n + 2)), total, alpha=0.5 * n).round_().long()
            sm_on = self._sign_softmax(signs, pid, table, f_layer, bounds, beta)
            for j in range(len(layers)):                      # Eq. 11 on U: F += β(sm − sm_off)
                sm_on[:, bounds[j]:bounds[j + 1]].sub_(off[:, j:j + 1])
            F.index_add_(1, idx, sm_on)
            row_total = signs.sum(dim=1).double()
            self._tick("element-wise (sign)")
            el_summary = row_total / max(idx.numel(), 1)
            el_centroid = float(table.centroid[pid.cpu()].mean()) if idx.numel() else float("nan")
            signs = torch.sign(agg)                            # for the report's samples
            g_on = (table, pid)
        else:
            s_cos = sim.selected_cosine(mom)                   # (n,)
            cl_el = self._cluster(s_cos[None, :])
            f_el = self._generate(s_cos[:, None], cl_el)       # (n, 1)
            g_on_layer = torch.minimum(f_el, f_layer)          # (n, L)
            sm_on_layer = torch.softmax(g_on_layer, dim=0).to(x.dtype)
            diff = beta * (sm_on_layer - sm_off)
            sel_f = selected.to(x.dtype)
            for j, sl in enumerate(layers):
                F[:, sl].addr_(diff[:, j], sel_f[sl])
            g_on = g_on_layer
            el_summary, el_centroid = s_cos, float(cl_el.centroid[0])
            self._tick("element-wise (cosine)")
        self._remember(x, F, selected, idx, layers, l_cos, l_pear, cl_cos, cl_pear,
                       g_off, g_on, el_summary, el_centroid, signs)
        self._tick("report")

    def _sign_generating(self, signs: Tensor, pid: Tensor, table: ms.SignTable) -> Tensor:
        """Eq. 8 for sign measurements (n, m) with count patterns ``pid`` (m,)."""
        o = self.options
        dev, dt = signs.device, signs.dtype
        cent = table.centroid.to(dev, dt)[pid][None, :]
        own = table.own.to(dev, dt)[pid[None, :].expand_as(signs), (signs + 1).long()]
        h = table.bandwidth.to(dev, dt)[pid][None, :]
        c = cent if o["centroid"] == "majority" else own
        return fac.generating_function(signs, c, o["generating"],
                                       scale=table.scale.to(dev, dt)[pid][None, :],
                                       tolerance=self.tolerance, member=(own - cent).abs() <= h,
                                       bandwidth=h)

    def _sign_softmax(self, signs: Tensor, pid: Tensor, table: ms.SignTable, f_layer: Tensor,
                      bounds: list[int], beta: float) -> Tensor:
        """β · softmax over participants of min(f_S, f_layer) on U (Eq. 11), (n, |U|).

        Literal preset (signed, majority): exp is monotone, so with K_l = min(0, maxᵢ f_il)
        exp(g − K) = min(exp(S)·exp(−c_w − K), exp(f_il − K)), where S ∈ {−1, 0, 1} and the
        other factors are per column or per (participant, layer): no (n, |U|) gather; the
        column maxima lie in [e⁻², 1] (no overflow, no total underflow). Other option
        combinations materialise g and call ``torch.softmax``.
        """
        o = self.options
        dt = signs.dtype
        if o["generating"] == "signed" and o["centroid"] == "majority":
            e = torch.exp(signs)
            colexp = torch.exp(-table.centroid.to(signs.device)[pid])    # exp(−c_w), (|U|,)
            K = torch.clamp(f_layer.amax(dim=0), max=0.0)                 # (L,)
            cap = torch.exp(f_layer - K).to(dt)                           # (n, L)
            for j in range(len(bounds) - 1):
                r = slice(bounds[j], bounds[j + 1])
                if r.start < r.stop:
                    col = (colexp[r] * torch.exp(-K[j])).clamp_(max=1e30).to(dt)
                    e[:, r].mul_(col).clamp_(max=cap[:, j:j + 1])
            return e.div_(e.sum(dim=0).div_(beta))
        g = self._sign_generating(signs, pid, table)
        fl = f_layer.to(dt)
        for j in range(len(bounds) - 1):
            g[:, bounds[j]:bounds[j + 1]].clamp_(max=fl[:, j:j + 1])
        return torch.softmax(g, dim=0).mul_(beta)

    def _remember(self, x, F, selected, idx, layers, l_cos, l_pear, cl_cos, cl_pear,
                  g_off, g_on, el_summary, el_centroid, signs) -> None:
        """Keep what :meth:`report` needs; the sampled values are only formed when asked for."""
        n, d = x.shape
        k = min(self.report_samples, d)
        last = self._last
        last.update(layer_cosine=l_cos, layer_pearson=l_pear,
                    centroid_layer_cosine=cl_cos.centroid, centroid_layer_pearson=cl_pear.centroid,
                    bandwidth_layer_cosine=cl_cos.bandwidth,
                    bandwidth_layer_pearson=cl_pear.bandwidth,
                    scale_layer_cosine=cl_cos.scale, scale_layer_pearson=cl_pear.scale,
                    elementwise=el_summary, centroid_elementwise=el_centroid,
                    selected_fraction=float(idx.numel()) / d,
                    layer_sizes=[sl.stop - sl.start for sl in layers])
        if k == 0:
            self._pending = None
            last["sample"] = None
            return
        sidx = torch.div(torch.arange(k, device=x.device) * d, k, rounding_mode="floor")
        if signs is not None:                                  # Eq. 5 at the samples
            signs = x[:, sidx].sign() * signs[sidx]
        # F changes in place at the next iteration: copy the sampled columns now
        self._pending = dict(n=n, sidx=sidx, layers=layers, selected=selected, idx=idx,
                             g_off=g_off, g_on=g_on, signs=signs, el_summary=el_summary,
                             f_layer=self._f_layer, l_cos=l_cos, l_pear=l_pear,
                             factor=F[:, sidx].double())
        last.pop("sample", None)

    def _sample(self) -> Optional[dict]:
        """The sampled coordinates' measurements, generating values and factors (report)."""
        p = self._pending
        if p is None:
            return None
        n, sidx, idx, signs, g_on = p["n"], p["sidx"], p["idx"], p["signs"], p["g_on"]
        k = sidx.numel()
        dev = sidx.device
        starts = torch.tensor([sl.start for sl in p["layers"]], device=dev)
        slay = torch.searchsorted(starts, sidx, right=True) - 1
        in_u = p["selected"][sidx]
        pos = torch.searchsorted(idx, sidx).clamp(max=max(idx.numel() - 1, 0))
        g = p["g_off"][:, slay].clone()
        nan = torch.full((n, k), float("nan"), dtype=torch.float64, device=dev)
        el = nan
        if idx.numel():
            if signs is not None:
                table, pid = g_on
                f_el = self._sign_generating(signs, pid[pos], table).double()
                g_sel = torch.minimum(f_el, p["f_layer"][:, slay])
                el = torch.where(in_u[None, :], signs.double(), nan)
            else:
                g_sel = g_on[:, slay]
                el = torch.where(in_u[None, :], p["el_summary"][:, None].expand(n, k), nan)
            g = torch.where(in_u[None, :], g_sel.to(g.dtype), g)
        return dict(index=sidx, layer=slay, selected=in_u, elementwise=el,
                    layer_cosine=p["l_cos"][:, slay], layer_pearson=p["l_pear"][:, slay],
                    generating=g, factor=p["factor"])

    # ----------------------------------------------------------------- report
    def report(self) -> dict:
        """Plain lists/floats for plots: the last iteration's measurements, centroids, factors.

        Keys: ``iteration``, ``round``, ``sync``, ``reading``, ``n``, ``d``, ``weights`` (n);
        ``selected_fraction`` |U|/d; ``layer_sizes``; ``layer_cosine`` and ``layer_pearson``
        (n × L, Eqs. 6–7) with their ``centroid_*``, ``bandwidth_*`` and ``scale_*`` (L);
        ``elementwise``
        (n: the calibrated Eq. 5 cosine, or the mean literal sign agreement over U) and
        ``centroid_elementwise``; ``sample`` — for ``report_samples`` evenly spaced
        coordinates: ``index``, ``layer``, ``selected``, and n × k lists ``elementwise``
        (NaN off U), ``layer_cosine``, ``layer_pearson``, ``generating`` (Eq. 11's minimum)
        and ``factor`` (F).
        """
        def plain(v):
            if isinstance(v, Tensor):
                return v.detach().cpu().tolist()
            if isinstance(v, dict):
                return {k: plain(u) for k, u in v.items()}
            return v

        out = {"iteration": self.iteration, "reading": self.reading,
               "weights": plain(self.weights) if self.weights is not None else None}
        out.update({k: plain(v) for k, v in self._last.items()})
        if self._pending is not None:
            out["sample"] = plain(self._sample())
        return out
