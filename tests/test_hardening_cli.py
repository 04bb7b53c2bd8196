"""Issue 23 item 7 (CLI and config) and issue 19 items 6-7: dates in any ISO 8601 form and inside the data, text
printed as written, bounded YAML, redacted secrets, progress in logs, one thread budget, `twin list` of every kind."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from twins import api, config, tracking
from twins.cli import app

UTC = timezone.utc
BROKEN = Path(__file__).parent / "data" / "broken"
runner = CliRunner()


@pytest.fixture
def cli_env(twins_home, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # rich would otherwise wrap long lines at 80 columns
    return twins_home


# --- dates --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("2017-09-30T12:00:00+02:00", datetime(2017, 9, 30, 10, tzinfo=UTC)),
    ("2017-09-30T12:00-05:30", datetime(2017, 9, 30, 17, 30, tzinfo=UTC)),
    ("2017-09-30T12:00:00Z", datetime(2017, 9, 30, 12, tzinfo=UTC)),
    ("2017-09-30", datetime(2017, 9, 30, tzinfo=UTC)),
    ("2017-09-30T12:00", datetime(2017, 9, 30, 12, tzinfo=UTC)),
    (" 2017-09-30 12:00 ", datetime(2017, 9, 30, 12, tzinfo=UTC)),
    (date(2017, 9, 30), datetime(2017, 9, 30, tzinfo=UTC)),
    (datetime(2017, 9, 30, 14, tzinfo=timezone(timedelta(hours=2))), datetime(2017, 9, 30, 12, tzinfo=UTC)),
])
def test_as_of_takes_any_iso_form_as_utc(value, expected):
    parsed = api.parse_as_of(value)
    assert parsed == expected and parsed.utcoffset().total_seconds() == 0 and parsed.tzinfo == UTC


@pytest.mark.parametrize("value", ["9999-01-01", "0001-01-01", "9999-12-31T23:59:59Z", "1899-12-31"])
def test_as_of_outside_the_years_twins_works_with_is_refused_before_arithmetic(value):
    with pytest.raises(ValueError, match=r"outside the years 1900-2199"):
        api.parse_as_of(value)


@pytest.fixture
def ingested(cli_env):
    assert runner.invoke(app, ["ingest", str(BROKEN / "base.yaml"), "--no-track"]).exit_code == 0  # 2023-01-05..07
    return cli_env


@pytest.mark.parametrize(("as_of", "words"), [
    ("9999-01-01", ["as_of 9999-01-01", "outside the years"]),        # built a year-9999 snapshot before
    ("0001-01-01", ["as_of 0001-01-01", "outside the years"]),        # OverflowError in the outlook before
    ("2040-01-01", ["after the last event", "2023-01-07", "10 years", "2033-01-07"]),
    ("2020-01-01", ["not after the first event", "2023-01-05"]),
])
def test_build_refuses_dates_outside_the_data(ingested, as_of, words):
    out = runner.invoke(app, ["build", str(BROKEN / "base.yaml"), "--no-track", "--as-of", as_of])
    assert out.exit_code == 2, out.output
    assert all(w in out.output for w in words), out.output
    assert "Traceback" not in out.output


def test_build_with_an_offset_as_of_stores_the_utc_time(ingested):
    out = runner.invoke(app, ["build", str(BROKEN / "base.yaml"), "--no-track", "--as-of", "2023-01-06T12:00+02:00"])
    assert out.exit_code == 0, out.output  # TypeError from polars (time zone differs) before
    assert "as of 2023-01-06T10:00:00+00:00" in out.output


def test_unquoted_yaml_dates_are_accepted_wherever_a_date_is(tmp_path):
    from twins.pipeline import load_pipeline_config
    from twins.sim import load_config

    (tmp_path / "p.yaml").write_text("pipeline: outlook\nexperiment: x\nsource: s.yaml\nas_of: 2024-10-27\n"
                                     "params: {cutoff: 2024-06-01}\n")
    cfg = load_pipeline_config(tmp_path / "p.yaml")
    assert cfg.as_of == "2024-10-27" and api.parse_as_of(cfg.as_of) == datetime(2024, 10, 27, tzinfo=UTC)
    assert cfg.params["cutoff"] == "2024-06-01"
    override = load_pipeline_config(tmp_path / "p.yaml", ["as_of=2024-11-03"])
    assert override.as_of == "2024-11-03"
    sim = load_config(Path(__file__).parents[1] / "configs" / "sim" / "market.yaml", ["start=2025-03-01"])
    assert sim.start == datetime(2025, 3, 1, tzinfo=UTC)


# --- text printed as written ----------------------------------------------------------------------------------------

def test_errors_with_markup_characters_print_as_written(cli_env, tmp_path):
    missing = tmp_path / "shop[/]x [bold]y.yaml"
    out = runner.invoke(app, ["ingest", str(missing), "--no-track"])
    assert out.exit_code == 2, out.output  # rich's MarkupError traceback before
    assert f"error: config file {missing} does not exist" in out.output


def test_warnings_with_markup_characters_print_as_written(capsys):
    from twins import cli

    cli._warn("column [/] has [red]odd[/red] values", UserWarning, "x.py", 1)
    assert "warning: column [/] has [red]odd[/red] values" in capsys.readouterr().err


def test_twin_show_prints_values_with_markup_characters(cli_env):
    from twins.twin.store import TwinStore

    TwinStore(cli_env / "store").write(pl.DataFrame({"customer_id": ["c[/]1"], "note": ["[bold]x[/]"]}), "s")
    out = runner.invoke(app, ["twin", "show", "c[/]1", "--source", "s"])
    assert out.exit_code == 0, out.output
    assert "[bold]x[/]" in out.output and "c[/]1" in out.output


# --- bounded YAML ---------------------------------------------------------------------------------------------------

def _bomb(path: Path, levels: int) -> Path:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_alias_bomb_is_refused_quickly_naming_the_file(tmp_path):
    path = _bomb(tmp_path / "laughs.yaml", 6)  # 341 bytes, 597,871 values expanded; 7 levels took 2.4 s, 8 ~20 s
    t0 = time.perf_counter()
    with pytest.raises(config.ConfigError, match=r"laughs\.yaml.*100,000 values"):
        config.read_yaml(path)
    assert time.perf_counter() - t0 < 0.1
    _bomb(path, 12)  # would be 3 * 10^11 values
    t0 = time.perf_counter()
    with pytest.raises(config.ConfigError, match="laughs.yaml"):
        config.read_yaml(path)
    assert time.perf_counter() - t0 < 0.1


@pytest.mark.parametrize(("text", "words"), [
    ("a: &a [1, *a]\n", "contains it"),                         # RecursionError before
    ("a: " + "[" * 300 + "]" * 300 + "\n", "levels deep"),       # RecursionError in the composer before
])
def test_recursive_or_deep_yaml_is_a_config_error(tmp_path, text, words):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(config.ConfigError, match=words):
        config.read_yaml(tmp_path / "c.yaml")


def test_oversized_config_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("a: [" + "1, " * 400_000 + "1]\n")
    with pytest.raises(config.ConfigError, match=r"c\.yaml is over 1,048,576 bytes"):
        config.read_yaml(tmp_path / "c.yaml")


def test_ordinary_aliases_still_work(tmp_path):
    (tmp_path / "c.yaml").write_text("base: &b {lr: 0.01, layers: [8, 8]}\nmodels: {one: *b, two: *b}\n")
    assert config.read_yaml(tmp_path / "c.yaml")["models"]["two"] == {"lr": 0.01, "layers": [8, 8]}


# --- redaction ------------------------------------------------------------------------------------------------------

class Recorder:
    """A stand-in for the mlflow module: records every call's arguments as text."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(f"{name} {args!r} {kwargs!r}")


TOKEN = "tok-8d61c2b95e"


@pytest.fixture
def secret_source(tmp_path, monkeypatch) -> Path:
    data = tmp_path / "private-exports-7f3a"  # $SHOP_DATA
    data.mkdir()
    (data / "clean.csv").write_text((BROKEN / "clean.csv").read_text())
    monkeypatch.setenv("SHOP_DATA", str(data))
    monkeypatch.setenv("SHOP_TOKEN", TOKEN)
    text = (BROKEN / "base.yaml").read_text().replace("path: clean.csv", "path: ${SHOP_DATA}/clean.csv")
    (tmp_path / "shop.yaml").write_text(text)
    return tmp_path / "shop.yaml"


def test_environment_values_and_credentials_are_redacted_in_params_and_config_artifacts(secret_source):
    secret_source.write_text(secret_source.read_text() + "extra:\n  password: hunter2\n  max_tokens: 128\n"
                             "  feed: https://bob:hunter2@shop.example/api?token=${SHOP_TOKEN}\n")
    tree = config.read_yaml(secret_source)
    assert tree["files"][0]["path"].startswith(str(secret_source.parent)) and TOKEN in tree["extra"]["feed"]  # in memory
    mlflow = Recorder()
    tracking.log_params(mlflow, tree)
    tracking.log_config(mlflow, tree, "config/source.yaml")
    logged = "\n".join(mlflow.calls)
    for secret in (os.environ["SHOP_DATA"], TOKEN, "hunter2"):
        assert secret not in logged
    assert "${SHOP_DATA}/clean.csv" in logged and "https://***@shop.example/api?token=***" in logged
    assert "'extra.max_tokens': '128'" in logged


def test_ingest_logs_a_redacted_source_config(secret_source):
    from twins.data.source import load_source

    cfg = load_source(secret_source)
    report = api.ingest(cfg, track=False)
    mlflow = Recorder()
    api.log_ingest(mlflow, cfg, report)
    logged = "\n".join(call for call in mlflow.calls if not call.startswith("log_input"))
    assert os.environ["SHOP_DATA"] not in logged and "${SHOP_DATA}" in logged


def test_printed_errors_are_redacted(cli_env, secret_source):
    out = runner.invoke(app, ["ingest", str(secret_source), "--no-track", "--set", "files=[{path: ${SHOP_DATA}/gone.csv}]"])
    assert out.exit_code == 2, out.output
    assert "${SHOP_DATA}/gone.csv" in out.output and os.environ["SHOP_DATA"] not in out.output


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql://user:pa55@db:5432/x", "postgresql://***@db:5432/x"),
    ("https://s3.example/b?X-Amz-Signature=abc&part=1", "https://s3.example/b?X-Amz-Signature=***&part=1"),
    ("https://h/p?api_key=k1&access_token=k2&page=3", "https://h/p?api_key=***&access_token=***&page=3"),
    ("sqlite:////home/u/.twins/mlflow.db", "sqlite:////home/u/.twins/mlflow.db"),
])
def test_uri_credentials_are_redacted(text, expected):
    assert config.redact_text(text) == expected


# --- progress in logs -------------------------------------------------------------------------------------------------

@pytest.fixture
def chatty(monkeypatch):
    """Progress lines from the first second (jobs under ``QUIET_S`` print nothing in a log)."""
    monkeypatch.setattr("twins.progress.QUIET_S", 0.0)


def test_progress_prints_plain_flushed_lines_when_not_on_a_terminal(chatty):
    from twins.progress import track

    out = io.StringIO()
    console = Console(file=out, width=200)
    assert list(track(range(300), "training epoch 3/8", unit="batches", console=console)) == list(range(300))
    lines = out.getvalue().splitlines()
    assert any(line.endswith("training epoch 3/8: 40% (120/300 batches, 00:00)") for line in lines)
    assert lines[-1].endswith("training epoch 3/8: done in 00:00 (300/300 batches)")
    assert 10 <= len(lines) <= 13  # every 10 %, not every batch
    assert all(line[:8].replace(":", "").isdigit() for line in lines)  # the time of day


def test_progress_is_silent_for_short_jobs_and_keeps_a_log_alive_for_long_ones(monkeypatch):
    from twins.progress import Progress

    out = io.StringIO()
    with Progress("quick", console=Console(file=out, width=200)):
        pass
    assert out.getvalue() == ""
    monkeypatch.setattr("twins.progress.QUIET_S", 0.05)
    with Progress("ingesting x.csv", console=Console(file=out, width=200), every_s=0.1):
        time.sleep(0.45)  # one step, no news from it
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("ingesting x.csv: running (00:00)") and lines[-1].endswith("ingesting x.csv: done in 00:00")
    assert 4 <= len(lines) <= 7


def test_a_job_in_a_log_flushes_standard_output_at_each_line(monkeypatch):
    from twins.progress import Progress

    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # a file, as under nohup
    monkeypatch.setattr(sys, "stdout", stdout)
    with Progress("job", console=Console(file=io.StringIO())):
        print("result 1")
        assert stdout.buffer.getvalue() == b"result 1\n"  # block-buffered until the job ended before


def test_training_loop_progress_reaches_a_log(chatty, capsys):
    from twins.training import progress

    assert list(progress(list(range(20)), "epoch 1/2", show=True)) == list(range(20))
    err = capsys.readouterr().err
    assert "epoch 1/2: 50% (10/20 batches" in err and "epoch 1/2: done in" in err  # a transient bar printed nothing


def test_commands_log_progress_lines(chatty, cli_env):
    out = runner.invoke(app, ["ingest", str(BROKEN / "base.yaml"), "--no-track"])
    assert out.exit_code == 0, out.output
    assert f"ingesting {BROKEN / 'base.yaml'}: running" in out.output and "done in" in out.output


def test_pipeline_reports_each_node_as_it_starts():
    from twins.pipeline import Pipeline, node

    seen = []
    one = node(lambda: 1, (), "x")
    pipe = Pipeline("p", [one, node(lambda x: x + 1, "x", "y")])
    catalog = pipe.run({}, on_node=lambda n, s: seen.append(("done", n.name)),
                       on_start=lambda n: seen.append(("start", n.name)))
    assert catalog["y"] == 2 and [k for k, _ in seen] == ["start", "done", "start", "done"]


# --- threads --------------------------------------------------------------------------------------------------------

def test_threads_option_applies_before_heavy_imports(tmp_path):
    script = ("import os, sys\nfrom twins.cli import app\n"
              "assert 'polars' not in sys.modules and 'torch' not in sys.modules, 'imported before --threads'\n"
              "try:\n    app(['--threads', '1', 'twin', 'list', '--source', 'none', '--kind', 'customer'])\n"
              "except SystemExit:\n    pass\n"
              "import polars, torch, numpy\nfrom threadpoolctl import threadpool_info\n"
              "print(os.environ['OMP_NUM_THREADS'], polars.thread_pool_size(), torch.get_num_threads(),"
              " {p['num_threads'] for p in threadpool_info()})\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_THREADS", "THREADS_MAX"))}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=env | {"TWINS_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:3] == ["1", "1", "1"], out.stdout


def test_set_threads_resizes_loaded_libraries():
    script = ("import torch, numpy, polars\nfrom threadpoolctl import threadpool_info\nfrom twins.threads import set_threads\n"
              "assert set_threads(1) == 1\nprint(torch.get_num_threads(), {p['num_threads'] for p in threadpool_info()})\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1 {1}"


def test_thread_count_precedence_and_refusals(monkeypatch):
    from twins import threads

    monkeypatch.delenv("TWINS_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.thread_count() == max(1, threads.usable_cores() // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.thread_count() == 3
    monkeypatch.setenv("TWINS_THREADS", "2")
    assert threads.thread_count() == 2 and threads.thread_count(5) == 5
    monkeypatch.setenv("TWINS_THREADS", "lots")
    with pytest.raises(ValueError, match="TWINS_THREADS='lots' is not a thread count"):
        threads.thread_count()


def test_threads_option_refuses_zero(cli_env):
    out = runner.invoke(app, ["--threads", "0", "twin", "list", "--source", "x"])
    assert out.exit_code == 2 and "threads='0' is not a thread count" in out.output


# --- twin list --------------------------------------------------------------------------------------------------------

def test_twin_list_lists_every_kind_by_default(cli_env):
    from twins.twin.store import TwinStore

    store = TwinStore(cli_env / "store")
    customer = store.write(pl.DataFrame({"customer_id": ["a"]}), "s", "customer")
    machine = store.write(pl.DataFrame({"twin_id": ["a/p"]}), "s", "machine", id_column="twin_id")
    out = runner.invoke(app, ["twin", "list", "--source", "s"])
    assert out.exit_code == 0, out.output
    label = lambda snap: f"{snap.path.parent.name}/{snap.path.name}"  # noqa: E731
    assert out.output.splitlines() == [f"customer {label(customer)}", f"machine {label(machine)}"]
    only = runner.invoke(app, ["twin", "list", "--source", "s", "--kind", "machine"])
    assert only.output.splitlines() == [label(machine)]
