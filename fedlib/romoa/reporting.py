"""What :meth:`fedlib.romoa.Romoa.report` returns: the last iteration's measurements and samples.

The measurements of Eqs. 5–7, their mean-shift centroids and the factors of Eq. 11 are kept
per iteration as summaries; the per-coordinate values at ``report_samples`` evenly spaced
coordinates are only formed when a report is asked for.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class RomoaReport:
    """The reporting half of :class:`fedlib.romoa.Romoa` (state lives on the aggregator)."""

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
