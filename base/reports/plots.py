"""The report figures as PNG bytes.

Drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot: no display, no
global figure registry to leak into, nothing changed for the rest of the process.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from base.prompt_records import NightRecords

#: Rubin's band colours (as in rubin_scheduler / the survey plots)
BAND_COLORS = {
    "u": "#1600ea",
    "g": "#31de1f",
    "r": "#b52626",
    "i": "#370201",
    "z": "#ba52ff",
    "y": "#61a2b3",
}
MAX_PLOT_MAG = 27.0  # fainter differences (variables near their mean) are all undetectable
METRIC_LABELS = {
    "zeropoint": "zeropoint (AB mag of 1 e⁻)",
    "sky_level": "sky background (e⁻/px)",
    "seeing_arcsec": "seeing FWHM (arcsec)",
    "psf_fwhm_px": "PSF FWHM (px)",
}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _hours(mjd: np.ndarray, t0: float) -> np.ndarray:
    return (np.asarray(mjd, np.float64) - t0) * 24.0


def latency_figure(night: NightRecords, perf: dict[str, Any]) -> bytes | None:
    """Histogram of visit and CCD latencies, and visit latency versus time, with the budget."""
    lat = perf["latency"]
    visit_lat = {int(k): v for k, v in lat["visitLatency"].items()}
    if not visit_lat:
        return None
    budget = lat["budgetSeconds"]
    times = night.ccd_times()
    ccd = times.stage("alertsPublished") - times.stage("endReadout")
    ccd = ccd[np.isfinite(ccd)]
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    values = np.array(list(visit_lat.values()))
    top = max(float(values.max()), float(ccd.max()) if len(ccd) else 0.0, budget) * 1.05
    bins = np.linspace(0, top, 40)
    ax1.hist(ccd, bins=bins, histtype="step", lw=1.5, label=f"CCDs ({len(ccd)})")
    ax1.hist(values, bins=bins, histtype="stepfilled", alpha=0.4, label=f"visits ({len(values)})")
    ax1.axvline(budget, color="k", ls="--", lw=1, label=f"budget {budget:g} s")
    if lat["visit"]["p95"] is not None:
        ax1.axvline(lat["visit"]["p95"], color="C3", lw=1, label="visit p95")
    ax1.set_xlabel("end of readout → alerts published (s)")
    ax1.set_ylabel("count")
    ax1.legend(fontsize=8)
    vmap = night.visit_map()
    known = [v for v in visit_lat if v in vmap]
    if known:
        t0 = min(vmap[v].obs_mjd for v in known)
        for band, color in BAND_COLORS.items():
            sel = [v for v in known if vmap[v].band == band]
            if sel:
                ax2.scatter(
                    _hours(np.array([vmap[v].obs_mjd for v in sel]), t0),
                    [visit_lat[v] for v in sel],
                    s=14,
                    color=color,
                    label=band,
                )
        ax2.set_xlabel(f"hours since the first visit (MJD {t0:.4f})")
        ax2.legend(fontsize=8, title="band")
    else:
        ax2.scatter(list(visit_lat), list(visit_lat.values()), s=14)
        ax2.set_xlabel("visit")
    ax2.axhline(budget, color="k", ls="--", lw=1)
    ax2.set_ylabel("visit latency (s)")
    ax2.set_ylim(bottom=0)
    fig.suptitle("Prompt-processing latency")
    return _png(fig)


def stages_figure(perf: dict[str, Any]) -> bytes | None:
    """Median (bar) and p95 (tick) duration of each stage-to-stage step."""
    steps = [s for s in perf["latency"]["steps"] if s["medianSeconds"] is not None]
    if not steps:
        return None
    fig = Figure(figsize=(8, 0.45 * len(steps) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(steps))[::-1]
    ax.barh(y, [s["medianSeconds"] for s in steps], color="C0", label="median")
    ax.scatter([s["p95Seconds"] for s in steps], y, marker="|", s=200, color="C3", label="p95")
    ax.set_yticks(y, [f"{s['after']} → {s['stage']}" for s in steps], fontsize=8)
    ax.set_xlabel("seconds per CCD (a step done ahead of time counts 0)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Where the latency goes")
    return _png(fig)


def pipelines_figure(perf: dict[str, Any]) -> bytes | None:
    """Share of the images taken that got through each pipeline, and failures by type."""
    rows = perf["pipelines"]
    if not perf["images"]["taken"]:
        return None
    by_type = perf["failures"]["byType"]
    ncols = 2 if by_type else 1
    fig = Figure(figsize=(6 * ncols, 0.4 * len(rows) + 1.5))
    axes = fig.subplots(1, ncols, squeeze=False)
    ax = axes[0, 0]
    y = np.arange(len(rows))[::-1]
    frac = [100.0 * (r["fraction"] or 0.0) for r in rows]
    ax.barh(y, frac, color="C2")
    for yi, r, f in zip(y, rows, frac, strict=True):
        ax.text(min(f, 100) + 1, yi, f"{r['imagesDone']}/{r['imagesExpected']}", va="center",
                fontsize=7)  # fmt: skip
    ax.set_yticks(y, [r["pipeline"] for r in rows], fontsize=8)
    ax.set_xlim(0, 118)
    ax.set_xlabel("images through the pipeline (% of those taken)")
    if by_type:
        ax = axes[0, 1]
        names = [t["failureType"] for t in by_type]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [t["recoverable"] for t in by_type], 0.4, label="recoverable", color="C1")
        ax.bar(x + 0.2, [t["unrecoverable"] for t in by_type], 0.4, label="unrecoverable",
               color="C3")  # fmt: skip
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("failed attempts")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.set_title("Failures by type")
    fig.suptitle("Observations through each pipeline")
    return _png(fig)


def metrics_figure(night: NightRecords) -> bytes | None:
    """Zeropoint, sky, seeing and PSF of every processed CCD versus time, per band."""
    vmap = night.visit_map()
    rows = [o for o in night.outcomes if o.status == "processed" and o.visit in vmap]
    if not rows:
        return None
    t0 = min(vmap[o.visit].obs_mjd for o in rows)
    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (metric, label) in zip(axes.flat, METRIC_LABELS.items(), strict=True):
        for band, color in BAND_COLORS.items():
            pts = [
                (vmap[o.visit].obs_mjd, getattr(o, metric))
                for o in rows
                if vmap[o.visit].band == band and getattr(o, metric) is not None
            ]
            if pts:
                t, v = np.array(pts).T
                ax.scatter(_hours(t, t0), v, s=8, color=color, alpha=0.7, label=band)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel(f"hours since the first visit (MJD {t0:.4f})")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, title="band", loc="upper right", fontsize=8)
    fig.suptitle("Data quality versus time (one point per processed CCD)")
    return _png(fig)


def efficiency_figure(dq: dict[str, Any]) -> bytes | None:
    """Detection efficiency versus true difference magnitude, per band and overall."""
    eff = dq["detectionEfficiency"]
    if not eff.get("available") or not eff["bins"]:
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()

    def draw(bins: list[dict[str, Any]], color: str, label: str, lw: float) -> None:
        bins = [b for b in bins if b["magLo"] < MAX_PLOT_MAG]
        if not bins:
            return
        c = np.array([(b["magLo"] + b["magHi"]) / 2 for b in bins])
        e = np.array([b["efficiency"] for b in bins])
        n = np.array([b["nTruth"] for b in bins], np.float64)
        # Wilson score interval (1 sigma): sensible for small bins and efficiencies near 0 or 1
        centre = (e + 0.5 / n) / (1 + 1 / n)
        half = np.sqrt(e * (1 - e) / n + 0.25 / n**2) / (1 + 1 / n)
        err = np.vstack([e - (centre - half), centre + half - e]).clip(0)
        ax.errorbar(c, e, yerr=err, color=color, lw=lw, marker="o", ms=3, capsize=2, label=label)

    if len(eff["perBand"]) > 1:
        draw(eff["bins"], "k", f"all ({eff['nTruth']})", 2.0)
    for band, b in eff["perBand"].items():
        m = f", m50 {b['m50']:.2f}" if b["m50"] is not None else ""
        draw(b["bins"], BAND_COLORS.get(band, "C0"), f"{band} ({b['nTruth']}{m})", 1.0)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel(f"true difference magnitude (AB; bins fainter than {MAX_PLOT_MAG:g} not drawn)")
    ax.set_ylabel(f"fraction detected (DIASource within {eff['radiusArcsec']:g}″)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Detection efficiency (variables, transients, moving objects)")
    return _png(fig)
