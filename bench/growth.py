"""`--growth`: import, upsert and export at several sizes (100k, 1M and 5M rows by default).

Each job runs in a process of its own (bench.job_run), so each measurement carries the job's peak
RSS. At every size and in every round: `import_file` mode=insert of the clean file into an empty
table, then mode=upsert of the same file into a table holding every other key with older values;
then, from a table freshly filled with that many rows, `export_dataset` as CSV and as JSON Lines.

Rows: one per series and size, its rate held against the same series' rate at the smallest size
(target: at least 0.85 of it, i.e. throughput flat within 15%), and one per series holding its
peak RSS at the largest size against the smallest (a ceiling of 1.15: memory independent of the
number of rows). Each carries a `growth` marker: {"series", "size", "measure"}.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from bench.context import BenchContext
from bench.data import insert_customers, write_customers_csv
from bench.exports import child, run_export
from bench.harness import CEILING, BenchError, Measured, Row, error_text, say
from bench.imports import check_counts
from jobs.models import ImportResult

DEFAULT_SIZES = (100_000, 1_000_000, 5_000_000)
FLAT = 0.85
"""Floor of a size's rate over the smallest size's: throughput within 15% of it."""
RSS_CEILING = 1.15
"""Ceiling of the peak RSS at the largest size over the smallest's."""
IMPORT = "import mode=insert, empty table"
UPSERT = "import mode=upsert, half the keys present"
EXPORT_CSV = "export csv"
EXPORT_JSONL = "export jsonl"
SERIES = (IMPORT, UPSERT, EXPORT_CSV, EXPORT_JSONL)


@dataclass
class _Series:
    name: str
    runs: dict[int, list[Measured]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    async def measure(self, size: int, run: Callable[[], Awaitable[Measured]]) -> None:
        if size in self.errors:
            return
        try:
            measured = await run()
        except Exception as exc:
            self.errors[size] = error_text(exc)
            say(f"  {self.name}, {size:,} rows: FAILED {self.errors[size]}")
            return
        self.runs.setdefault(size, []).append(measured)
        say(f"  {self.name}, {size:,} rows: {measured.seconds:.2f} s, {measured.rate:,.0f}/s, "
            f"peak RSS {measured.peak_rss_mb or 0:.1f} MB")  # fmt: skip

    def rate(self, size: int) -> float | None:
        runs = self.runs.get(size)
        return statistics.median(m.rate for m in runs) if runs else None

    def peak(self, size: int) -> float | None:
        peaks = [m.peak_rss_mb for m in self.runs.get(size, []) if m.peak_rss_mb is not None]
        return max(peaks) if peaks else None


async def _import(bench: BenchContext, *, path: str, mode: str, size: int) -> Measured:
    report = await child(bench, ["import", "--path", path, "--mode", mode])
    present = size // 2 if mode == "upsert" else 0
    result = ImportResult.model_validate(report["result"])
    check_counts(result, mode=mode, rows=size, inserted=size - present, updated=present,
                 rejected=0)  # fmt: skip
    return Measured(seconds=report["seconds"], rows=size, peak_rss_mb=report["peak_rss_mb"])


async def scenarios(bench: BenchContext, sizes: list[int]) -> list[Row]:
    series = {name: _Series(name) for name in SERIES}
    for size in sizes:
        name = f"growth-{size}.csv"
        path = bench.settings.import_dir / name
        say(f"growth: writing {size:,} customers to {path}")
        await write_customers_csv(bench.client, path, first=1, count=size)
        try:
            for number in range(1, bench.rounds + 1):
                say(f"growth: {size:,} rows, round {number}/{bench.rounds}")
                await bench.reset()
                await series[IMPORT].measure(
                    size, partial(_import, bench, path=name, mode="insert", size=size)
                )
                await bench.reset(insert_customers(first=2, count=size // 2, step=2, variant="old"))
                await series[UPSERT].measure(
                    size, partial(_import, bench, path=name, mode="upsert", size=size)
                )
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        say(f"growth: filling customers with {size:,} rows for the exports")
        await bench.reset(insert_customers(first=1, count=size))
        for _ in range(bench.rounds):
            for fmt, export in (("csv", EXPORT_CSV), ("jsonl", EXPORT_JSONL)):
                await series[export].measure(
                    size, partial(run_export, bench, fmt=fmt, compress=False, rows=size)
                )
    await bench.reset()
    rows: list[Row] = []
    for one in series.values():
        rows += _rows(one, sizes)
    return rows


def _rows(series: _Series, sizes: list[int]) -> list[Row]:
    first, last = sizes[0], sizes[-1]
    base = series.rate(first)
    out: list[Row] = []
    for size in sizes:
        row = Row(
            scenario=f"{series.name}, {size:,} rows (growth)",
            rows=size,
            baseline=f"same job at {first:,} rows",
            baseline_rate=base,
            target=FLAT,
            growth={"series": series.name, "size": size, "measure": "rate"},
        )
        runs = series.runs.get(size)
        if runs:
            row.seconds = statistics.median(m.seconds for m in runs)
            row.rate = series.rate(size)
            row.peak_rss_mb = series.peak(size)
        if row.rate and base:
            row.ratio = row.rate / base
            band = "within" if FLAT <= row.ratio <= 2 - FLAT else "outside"
            row.note = f"rate over the rate at {first:,} rows; {band} the ±15% band"
        if size in series.errors:
            row.note = f"error: {series.errors[size]}"
        out.append(row)
    small, large = series.peak(first), series.peak(last)
    rss = Row(
        scenario=f"{series.name} peak RSS, {last:,} vs {first:,} rows (growth)",
        rows=last,
        baseline=f"peak RSS at {first:,} rows",
        target=RSS_CEILING,
        target_is_ceiling=True,
        peak_rss_mb=large,
        growth={"series": series.name, "size": last, "measure": "peak_rss"},
    )
    if small is None or large is None:
        rss.note = "error: no peak RSS measured (a run failed)"
    else:
        rss.ratio = large / small
        rss.note = (
            f"ratio is the job process's peak RSS at {last:,} rows over {first:,} "
            f"({large:.1f} / {small:.1f} MB), {CEILING}"
        )
    out.append(rss)
    return out


def parse_sizes(text: str) -> list[int]:
    """`100000,1000000,5000000` (or 100k,1M,5M): ascending, distinct, at least 1,000 each."""
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip().replace("_", "").lower()
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        try:
            value = int(float(part[:-1]) * scale) if scale > 1 else int(part)
        except ValueError:
            raise BenchError(f"--growth: {part!r} is not a number of rows") from None
        if value < 1_000:
            raise BenchError(f"--growth: {value:,} rows; each size must be at least 1000")
        sizes.append(value)
    sizes = sorted(set(sizes))
    if len(sizes) < 2:
        raise BenchError("--growth: give at least two sizes, e.g. 100000,1000000,5000000")
    return sizes
