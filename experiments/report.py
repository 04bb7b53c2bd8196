"""Write a benchmark's table into BENCHMARKS.md between its markers, with command, data, machine and date."""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()}, Python {platform.python_version()}"


def write_section(name: str, title: str, command: str, data: str, body: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    block = (f"<!-- {name}:start -->\n## {title}\n\n- command: `{command}`\n- data: {data}\n"
             f"- machine: {machine()}\n- date: {stamp}\n\n{body.strip()}\n<!-- {name}:end -->")
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nEvery number here comes from the command above it; rerun it to reproduce.\n"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
