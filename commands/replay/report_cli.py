"""The replay summary as a terminal table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def _quality_rows(q: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Purity and completeness against the simulated truth (absent without one)."""
    if not q:
        return []
    cut = q.get("reliabilityThreshold")
    return [
        (
            "purity alerted / all DIASources",
            f"{_pct(q['purityAlerted'])} / {_pct(q['purityAllDiaSources'])}"
            + (f" (reliability ≥ {cut:.2f})" if cut is not None else ""),
        ),
        (
            "completeness S/N ≥ 7 alerted / detected",
            f"{_pct(q['completenessSnrGe7Alerted'])} / {_pct(q['completenessSnrGe7'])}",
        ),
    ]


def print_summary(summary: dict[str, Any], console: Console) -> None:
    lat = summary["latencySeconds"]
    share = summary.get("visitShareWithin60s")
    table = Table(title="night summary", show_header=False)
    rows = [
        ("complete", "yes" if summary["complete"] else "NO"),
        ("visits", str(summary["visits"])),
        ("CCDs expected / ingested", f"{summary['ccdsExpected']} / {summary['ccdsIngested']}"),
        (
            "CCDs processed / failed / deferred to catch-up",
            f"{summary['ccdsProcessed']} / {summary['ccdsFailed']}"
            f" / {summary.get('ccdsDeferred', 0)}",
        ),
        ("alerts", str(summary["alerts"])),
        ("latency p50 / p95 / max", f"{_s(lat['p50'])} / {_s(lat['p95'])} / {_s(lat['max'])}"),
        ("visits within 60 s", "-" if share is None else f"{100 * share:.0f} %"),
        *_quality_rows(summary.get("alertQuality")),
        ("wall time", "-" if summary["wallSeconds"] is None else f"{summary['wallSeconds']:.0f} s"),
    ]
    if summary.get("mode"):
        rows.insert(1, ("run", f"{summary['mode']} ({summary.get('why', '')})"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if summary.get("failure"):
        console.print(f"[red]the replay failed[/red]: {summary['failure']}", highlight=False)
        if summary.get("errorLog"):
            console.print(f"details: {summary['errorLog']}", highlight=False)
    if summary.get("waitingFor"):
        console.print(f"[red]still waiting for[/red] {summary['waitingFor']}", highlight=False)
    if summary.get("reportsFailed"):
        console.print(f"[red]reports not written[/red]: {summary['reportsFailed']}")
    for line in summary.get("leftProcesses", []):
        console.print(f"[yellow]stopped at exit[/yellow]: {line}", highlight=False)
    for name, why in summary.get("failures", {}).items():
        console.print(f"[red]failed[/red] {name}: {why}", highlight=False)
    for line in summary.get("recoveries", []):
        console.print(f"[yellow]recovered[/yellow] {line}", highlight=False)
    for kind, path in summary.get("reports", {}).items():
        console.print(f"{kind}: {path}", highlight=False)
