"""The bare-polars floor of experiments.bench_ingest decides the same rows as twins' ingest on the benchmark's
generated log (so its cost is a floor for the same work): the same accepted rows, the copies found by value."""

from __future__ import annotations

import polars as pl

from experiments.bench_ingest import SOURCE_YAML, bare_floor, generate, typed
from twins.data.ingest import ingest
from twins.data.source import load_source


def test_the_bare_floor_accepts_what_ingest_accepts(tmp_path):
    log = generate(20_000, seed=4)
    log = pl.concat([log, log.slice(100, 40), log.slice(5000, 3)])  # 43 copies of earlier lines
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"log.{fmt}"
        log.write_csv(path) if fmt == "csv" else typed(log).write_parquet(path)
        (tmp_path / f"{fmt}.yaml").write_text(SOURCE_YAML.format(path=path))
        cfg = load_source(tmp_path / f"{fmt}.yaml")
        floor = bare_floor(cfg, tmp_path / f"floor-{fmt}")
        report = ingest(cfg, tmp_path / f"out-{fmt}")
        assert (floor["rows"], floor["accepted"]) == (report.rows_in, report.accepted)
        assert floor["copies"] == 43 and 0 < report.quarantined["duplicate_line"] <= 43
        assert pl.read_parquet(tmp_path / f"floor-{fmt}" / "events.parquet").height == report.accepted
        assert set(floor) >= {"read", "checks", "duplicates", "write"}
