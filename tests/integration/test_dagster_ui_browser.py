"""The Dagster UI path in a real browser: `dagster dev` on the demo, Global asset lineage →
Materialize all → every partition → Launch backfill; the daemon `dagster dev` runs does the work;
then the `pairs` asset's sample thumbnails render in its metadata (markdown images: the UI strips
HTML <img> tags, so thumbnails must be `![caption](data:image/png;base64,...)`).

Drives Debian's chromium (/usr/bin/chromium) with Playwright; skips, saying why, where either is
missing (CI installs chromium in .ci/run, and playwright comes with the dev extra). Screenshots and
the server's log go to the test's tmp_path; on a failure their paths are in the assertion message."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from pbi_assets.partitions import PROJECT
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_skip

REPO = Path(__file__).resolve().parents[2]
SERVER_START_S = 180
BACKFILL_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster dev exited ({proc.returncode}); its log: {log}\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"dagster dev did not answer within {timeout_s}s; its log: {log}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to dagster dev's process group (webserver, daemon, code servers, run workers), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.3)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _wait_for_backfill(home: Path, timeout_s: float):
    """The one backfill of the instance, once it has ended."""
    import dagster as dg
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

    deadline = time.monotonic() + timeout_s
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline:
            backfills = instance.get_backfills()
            if backfills and backfills[0].status in BULK_ACTION_TERMINAL_STATUSES:
                return backfills[0], list(instance.get_runs())
            time.sleep(3)
        runs = [(r.run_id[:8], r.status.value, r.tags.get("dagster/partition")) for r in instance.get_runs()]
        raise AssertionError(f"the backfill did not end within {timeout_s}s; runs: {runs}")


def test_materialize_all_backfill_in_the_ui_then_pairs_thumbnails_render(tmp_path, monkeypatch):
    sync_playwright = sync_playwright_or_skip()
    import dagster as dg

    from pbi_assets.cli import main
    from pbi_assets.definitions import defs

    # the demo source alone, with the session's shard count: "every partition" is the demo's shards.
    # Launched runs execute their steps in the run's process (`executor: in_process`: no process per
    # step) and the smoke training takes 4 steps, to keep the test in minutes on 2 cores
    # (tests/integration/test_backfill.py runs the default executor and training)
    config = tmp_path / "pbi.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_root": str(tmp_path / "data"),
                "num_shards": PROJECT.num_shards,
                "executor": "in_process",
                "stages": {"checkpoint": {"max_steps": 4}},
            }
        )
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "pbi_assets" / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("PBI_DATA_ROOT", "PBI_EXECUTOR")}
    env.update(PBI_CONFIG=str(config), DAGSTER_HOME=str(home), HF_HUB_OFFLINE="1")
    log = tmp_path / "dagster_dev.log"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the finally stops all of it
        )
    page = None
    try:
        _wait_for_server(url, server, log, SERVER_START_S)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                _launch_backfill_from_lineage(page, url, shots)
                backfill, runs = _wait_for_backfill(home, BACKFILL_S)
                page.screenshot(path=str(shots / "3-backfill-ended.png"))
                assert backfill.status.value == "COMPLETED_SUCCESS", [(r.run_id, r.status.value) for r in runs]
                assert backfill.tags.get("dagster/from_ui") == "true"

                # the UI's backfill is the one `pbi backfill --source demo` makes: same assets, same partitions
                graph = defs.resolve_asset_graph()
                scratch = tmp_path / "scratch_home"
                scratch.mkdir()
                shutil.copyfile(REPO / "pbi_assets" / "dagster.yaml", scratch / "dagster.yaml")
                monkeypatch.setenv("DAGSTER_HOME", str(scratch))
                monkeypatch.chdir(REPO)
                assert main(["backfill", "--source", "demo"]) == 0
                with dg.DagsterInstance.from_config(str(scratch)) as instance:
                    (ours,) = instance.get_backfills()
                assert _targets(backfill, graph) == _targets(ours, graph)

                _check_pairs_thumbnails(page, url, tmp_path / "data", shots)
            finally:
                browser.close()
    except Exception as exc:
        if page is not None:
            try:
                page.screenshot(path=str(shots / "failure.png"))
            except Exception:  # noqa: BLE001 - the browser may be gone already
                pass
        raise AssertionError(f"{exc}\n(screenshots in {shots}; dagster dev's log: {log})") from exc
    finally:
        _stop_group(server)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)  # nothing of dagster dev is left


def _targets(backfill, graph) -> dict[str, list[str] | None]:
    target = backfill.get_asset_backfill_data(graph).target_subset
    out: dict[str, list[str] | None] = {k.to_user_string(): None for k in target.non_partitioned_asset_keys}
    for key, subset in target.partitions_subsets_by_asset_key.items():
        out[key.to_user_string()] = sorted(subset.get_partition_keys())
    return out


def _launch_backfill_from_lineage(page, url: str, shots: Path) -> None:
    page.goto(url + "/asset-groups", wait_until="domcontentloaded")
    materialize_all = page.get_by_role("button", name="Materialize all…")
    materialize_all.wait_for()
    page.get_by_text("Global asset lineage").first.wait_for()
    page.wait_for_timeout(2000)
    skip = page.get_by_role("button", name="Skip")  # the first visit's "Join the Dagster community" dialog
    if skip.count():
        skip.click()
    page.screenshot(path=str(shots / "1-lineage.png"))
    materialize_all.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Partition selection").wait_for()
    n_assets = len(defs_assets())
    dialog.get_by_text(f"Launch runs to materialize {n_assets} assets").wait_for()
    page.wait_for_timeout(2000)  # the partition keys load after the dialog opens
    every = dialog.get_by_role("button", name="All", exact=True)  # one per dimension: shard, source
    assert every.count() == 2
    for i in range(every.count()):
        every.nth(i).click()
        page.wait_for_timeout(500)
    dialog.get_by_text(f"{PROJECT.num_shards} partitions", exact=True).wait_for()
    page.screenshot(path=str(shots / "2-partitions.png"))
    launch = dialog.get_by_role("button", name="Launch backfill")
    assert launch.is_enabled()
    launch.click()
    dialog.wait_for(state="hidden")


def defs_assets() -> list:
    from pbi_assets.definitions import PARTITIONED_ASSETS, UNPARTITIONED_ASSETS

    return [*PARTITIONED_ASSETS, *UNPARTITIONED_ASSETS]


def _check_pairs_thumbnails(page, url: str, data_root: Path, shots: Path) -> None:
    """The `pairs` asset → Partitions → a partition with pairs: its `samples` markdown shows PNG
    thumbnails the browser decoded (and its histogram a PNG plot)."""
    import pyarrow.parquet as pq

    with_pairs = [
        p for p in sorted((data_root / "tables" / "pairs" / "demo").glob("*.parquet")) if pq.read_metadata(p).num_rows
    ]
    assert with_pairs, "the demo gave no pairs"
    partition = f"{with_pairs[0].stem}|demo"
    page.goto(
        f"{url}/assets/pairs?view=partitions&partition={urllib.parse.quote(partition)}", wait_until="domcontentloaded"
    )
    for key, alt in (("samples", ": without"), ("histogram_area_fraction", "area")):
        row = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
        row.get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        images = dialog.locator("img")
        images.first.wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('[role=dialog] img')].every(i => i.complete)", timeout=30_000
        )
        page.screenshot(path=str(shots / f"4-{key}.png"))
        found = [
            images.nth(i).evaluate("i => [i.src.slice(0, 22), i.naturalWidth, i.alt]") for i in range(images.count())
        ]
        assert found and all(src == "data:image/png;base64," and width > 0 for src, width, _ in found), found
        assert any(alt in caption for *_, caption in found), found
        dialog.get_by_role("button", name="Close").click()
        dialog.wait_for(state="hidden")
