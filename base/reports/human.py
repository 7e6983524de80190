"""The human form of the two reports: document blocks built from the report dicts and figures."""

from __future__ import annotations

from typing import Any

from .render import Block, Heading, Image, Para, Table, fmt, pct

MAX_LISTED = 200  # failures listed one by one; the rest are counted


def _title(name: str, report: dict[str, Any]) -> str:
    night = report.get("dayObs")
    return f"{name} — night {night}" if night is not None else name


def _stats_cell(s: dict[str, Any], digits: int = 2) -> str:
    if not s["n"]:
        return "–"
    return f"{s['median']:.{digits}f} ({s['p05']:.{digits}f}–{s['p95']:.{digits}f})"


def _failure_rows(rows: list[dict[str, Any]]) -> tuple[tuple[Any, ...], ...]:
    return tuple(
        (
            r["visit"],
            r["detector"],
            r["attempt"],
            r["status"],
            r["failureType"],
            r["reason"],
            r["recovery"],
        )
        for r in rows[:MAX_LISTED]
    )


def _node_loss_blocks(losses: list[dict[str, Any]]) -> list[Block]:
    """Ray nodes lost during the night (a multi-node run), and the CCDs each cost."""
    if not losses:
        return []
    rows = tuple(
        (
            loss["utc"],
            loss["nodeId"][:12],
            loss["visit"],
            ", ".join(loss["actors"]) or "none",
            loss["ccdsInterrupted"],
            loss["ccdsFailed"],
        )
        for loss in losses
    )
    headers = ("time (UTC)", "node", "at visit", "actors restarted elsewhere",
               "CCDs under way", "of them failed")  # fmt: skip
    return [
        Heading(2, "Node losses"),
        Para(
            f"**{len(losses)}** Ray node(s) lost; their actors restarted on the surviving "
            "nodes. CCDs under way: those of the visits read out that had not ended when it went."
        ),
        Table(headers, rows),
    ]


def performance_blocks(perf: dict[str, Any], figures: dict[str, bytes]) -> list[Block]:
    title = _title("Performance Report", perf)
    blocks: list[Block] = [
        Heading(1, title),
        Para(f"LSE-61 **DMS-REQ-0099**. Generated {perf.get('generatedUtc', '')}".strip()),
    ]
    if perf["empty"]:
        return [*blocks, Para(f"**{perf['message']}**")]
    lat, img, out, fail = perf["latency"], perf["images"], perf["outcomes"], perf["failures"]
    dfr = perf["deferral"]
    blocks += [
        Heading(2, "Summary"),
        Table(
            ("figure", "value"),
            (
                ("visits", perf["night"]["visits"]),
                ("bands", ", ".join(f"{b}: {n}" for b, n in perf["night"]["bands"].items())),
                ("images taken (CCDs)", img["taken"]),
                ("images ingested", img["ingested"]),
                ("CCDs processed", out["processed"]),
                (
                    "CCDs failed / abandoned / skipped",
                    f"{out['failed']} / {out['abandoned']} / {out['skipped']}",
                ),
                ("CCDs without an outcome", out["noOutcome"]),
                (
                    "CCDs (visits) deferred / caught up / awaiting catch-up",
                    f"{dfr['ccdsDeferred']} ({dfr['visitsDeferred']}) / {dfr['ccdsCaughtUp']}"
                    f" ({dfr['visitsCaughtUp']}) / {dfr['ccdsAwaitingCatchUp']}",
                ),
                ("DIASources", perf["products"]["diaSources"]),
                ("alerts", perf["products"]["alerts"]),
                (
                    "visit latency p50 / p95 / max (s)",
                    " / ".join(fmt(lat["visit"][k], 1) for k in ("p50", "p95", "max")),
                ),
                (f"visits within {lat['budgetSeconds']:g} s", pct(lat["visitShareWithinBudget"])),
                (f"alerts within {lat['budgetSeconds']:g} s", pct(lat["alertShareWithinBudget"])),
            ),
        ),
        Heading(2, "Observations processed per pipeline"),
        Table(
            ("pipeline", "images done", "of taken", "share", "visits complete"),
            tuple(
                (
                    r["pipeline"],
                    r["imagesDone"],
                    r["imagesExpected"],
                    pct(r["fraction"]),
                    r["visitsComplete"],
                )
                for r in perf["pipelines"]
            ),
        ),
    ]
    if "pipelines" in figures:
        blocks.append(
            Image("performance_pipelines.png", "images per pipeline", figures["pipelines"])
        )
    blocks += [
        Heading(2, "Images taken, archived and ingested"),
        Table(
            ("taken", "read out", "in summit buffer", "ingested (archived)", "not ingested"),
            ((img["taken"], img["readOut"], img["inBuffer"], img["ingested"], img["notIngested"]),),
        ),
    ]
    blocks += _node_loss_blocks(perf.get("nodeLosses") or [])
    blocks.append(Heading(2, "Failures"))
    n_rec, n_unrec = fail["nRecoverable"], fail["nUnrecoverable"]
    if not n_rec and not n_unrec:
        blocks.append(Para("No failures."))
    else:
        blocks += [
            Para(
                f"Recoverable failures (a later attempt processed the CCD): **{n_rec}**. "
                f"Unrecoverable in prompt processing: **{n_unrec}** (see the recovery column)."
            ),
            Heading(3, "By type"),
            Table(
                ("failure type", "recoverable", "unrecoverable", "recovery"),
                tuple(
                    (
                        t["failureType"],
                        t["recoverable"],
                        t["unrecoverable"],
                        "; ".join(f"{k}: {v}" for k, v in t["recoveries"].items()),
                    )
                    for t in fail["byType"]
                ),
            ),
        ]
        headers = ("visit", "detector", "attempt", "status", "type", "reason", "recovery")
        for name, key, n in (
            ("Unrecoverable failures", "unrecoverable", n_unrec),
            ("Recoverable failures", "recoverable", n_rec),
        ):
            if n:
                blocks += [Heading(3, name), Table(headers, _failure_rows(fail[key]))]
                if n > MAX_LISTED:
                    blocks.append(Para(f"… and {n - MAX_LISTED} more (all in the JSON report)."))
    blocks += [
        Heading(2, "Latency: end of readout → alerts published"),
        Table(
            ("", "n", "p50 (s)", "p95 (s)", "max (s)"),
            tuple(
                (name, d["n"], d["p50"], d["p95"], d["max"])
                for name, d in (("per CCD", lat["ccd"]), ("per visit", lat["visit"]))
            ),
        ),
        Para(
            f"Visits within {lat['budgetSeconds']:g} s: {lat['nVisitsWithinBudget']} "
            f"({pct(lat['visitShareWithinBudget'])}); alerts within the budget: "
            f"{pct(lat['alertShareWithinBudget'])} (LSE-61 OTT1 asks 98 %). Median preload "
            f"lead (ready before the end of readout): {fmt(lat['preloadLeadMedianSeconds'], 1)} s."
        ),
    ]
    if "latency" in figures:
        blocks.append(Image("performance_latency.png", "latency", figures["latency"]))
    blocks += [
        Heading(3, "Per-stage breakdown"),
        Para("Time from the latest earlier stage to each stage, per CCD; 0 when done ahead."),
        Table(
            ("step", "CCDs", "median (s)", "p95 (s)"),
            tuple(
                (f"{s['after']} → {s['stage']}", s["n"], s["medianSeconds"], s["p95Seconds"])
                for s in lat["steps"]
            ),
        ),
    ]
    if "stages" in figures:
        blocks.append(Image("performance_stages.png", "stage breakdown", figures["stages"]))
    return blocks


def quality_blocks(dq: dict[str, Any], figures: dict[str, bytes]) -> list[Block]:
    title = _title("Data Quality Report", dq)
    blocks: list[Block] = [
        Heading(1, title),
        Para(f"LSE-61 **DMS-REQ-0097**. Generated {dq.get('generatedUtc', '')}".strip()),
    ]
    if dq["empty"]:
        blocks.append(Para(f"**{dq['message']}**"))
    else:
        blocks += [
            Heading(2, "Per band"),
            Para("Median (5–95 % range) over the processed CCDs."),
            Table(
                (
                    "band",
                    "CCDs",
                    "visits",
                    "zeropoint (mag)",
                    "sky (e⁻/px)",
                    "seeing (″)",
                    "PSF FWHM (px)",
                    "astrometric rms (mas)",
                ),
                tuple(
                    (
                        band,
                        b["nCcds"],
                        b["nVisits"],
                        _stats_cell(b["zeropoint"], 3),
                        _stats_cell(b["skyLevel"], 1),
                        _stats_cell(b["seeingArcsec"]),
                        _stats_cell(b["psfFwhmPx"]),
                        _stats_cell(b["astromRmsMas"], 1),
                    )
                    for band, b in dq["perBand"].items()
                ),
            ),
        ]
        if "metrics" in figures:
            blocks.append(Image("quality_metrics.png", "metrics versus time", figures["metrics"]))
        if dq["flags"]:
            blocks += [
                Heading(2, "Flags"),
                Table(("flag", "CCDs"), tuple(dq["flags"].items())),
            ]
    eff = dq["detectionEfficiency"]
    if eff["available"] and "alertQuality" in eff:
        blocks += _alert_quality_blocks(eff["alertQuality"])
    blocks.append(Heading(2, "Detection efficiency versus magnitude"))
    if not eff["available"]:
        return [*blocks, Para(eff["message"])]
    pull = eff["fluxPull"]
    blocks += [
        Para(
            f"{eff['nDetected']} of {eff['nTruth']} true variable, transient and moving sources "
            f"on processed CCDs had a DIASource within {eff['radiusArcsec']:g}″; overall m50 "
            f"{fmt(eff['m50'])} mag (true difference magnitude). {eff['nUnmatchedDiaSources']} "
            f"of {eff['nDiaSources']} DIASources match no such source. Flux pull of the "
            f"matches: median {fmt(pull['median'])}, σ(MAD) {fmt(pull['sigmaMad'])}."
        ),
        Table(
            ("band", "true sources", "detected", "m50 (mag)"),
            tuple((b, v["nTruth"], v["nDetected"], v["m50"]) for b, v in eff["perBand"].items()),
        ),
        Table(
            ("kind", "true sources", "detected"),
            tuple((k, v["nTruth"], v["nDetected"]) for k, v in eff["perKind"].items()),
        ),
    ]
    if "efficiency" in figures:
        blocks.append(
            Image("quality_efficiency.png", "detection efficiency", figures["efficiency"])
        )
    blocks.append(
        Table(
            ("magnitude", "true sources", "detected", "efficiency"),
            tuple(
                (
                    f"{b['magLo']:.1f}–{b['magHi']:.1f}",
                    b["nTruth"],
                    b["nDetected"],
                    pct(b["efficiency"]),
                )
                for b in eff["bins"]
            ),
        )
    )
    return blocks


def _alert_quality_blocks(aq: dict[str, Any]) -> list[Block]:
    ast = aq["astrometry"]
    cut = aq["reliabilityThreshold"]
    return [
        Heading(2, "Purity and completeness"),
        Para(
            f"Purity (DIASources within {aq['radiusArcsec']:g}″ of a true variable, transient "
            f"or mover of their visit): {pct(aq['purityAllDiaSources'])} of all "
            f"{aq['nDiaSources']} DIASources; {pct(aq['purityAlerted'])} of the "
            f"{aq['nAlerted']} alerted (with an object"
            + (f", reliability ≥ {cut:g})." if cut is not None else ").")
            + f" Completeness at true S/N ≥ 7 ({aq['nTruthSnrGe7']} sources on processed CCD "
            f"pixels): {pct(aq['completenessSnrGe7'])} detected, "
            f"{pct(aq['completenessSnrGe7Alerted'])} alerted. DIASource astrometry against the "
            f"truth at S/N ≥ {ast['snrMin']:g}: {fmt(ast['diaSourceRmsMas'])} mas rms "
            f"({ast['n']} sources with a clean centroid; "
            f"{fmt(ast.get('diaSourceRmsMasWithFlagged'))} mas with the "
            f"{ast.get('nFlagged', 0)} at the CCD's edge or with a failed centroid); "
            "WCS fit at reference stars: "
            f"{fmt(ast.get('wcsFitRmsMasMedian'))} mas (median over CCDs)."
        ),
        Table(
            ("true S/N", "true sources", "detected", "alerted"),
            tuple(
                (
                    f"{b['lo']:g}–{b['hi']:g}" if b["hi"] is not None else f"≥ {b['lo']:g}",
                    b["nTruth"],
                    pct(b["completenessDetected"]),
                    pct(b["completenessAlerted"]),
                )
                for b in aq["completenessBySnr"]
            ),
        ),
    ]
