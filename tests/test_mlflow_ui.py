"""The MLflow UI over a sweep's SQLite store (as the README opens it) shows the study run, its trial runs and
their split monitors: a real ``mlflow server`` on 127.0.0.1, read by a real headless Chromium (Debian's
``chromium``, driven over the DevTools protocol). Screenshots go to ``test-artifacts/mlflow_ui_*.png``
(``mlflow_ui_failure.png``: the page shown when a check failed).

Markers ``ui`` and ``slow``: the default ``python -m pytest -q`` and CI (which runs every test) include it,
``-m ui`` runs it alone, ``-m "not slow"`` leaves it out. A missing chromium fails it (an error before the fixture's
sweep starts), never skips.
"""

import contextlib
import json
import re
import shutil
from pathlib import Path

import pytest
from ui_helpers import Browser, mlflow_server, require_chromium, run_sweep_cli

from segsweep.tracking.mlflow_writer import open_client

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
MONITORS = ("train/ce_real", "train/ce_synthetic")

pytestmark = pytest.mark.ui


def make_store(tmp: Path) -> Path:
    """The fixture store: the real sweep CLI's smoke study (``make_client_store(tmp)`` is a CLI-free stand-in)."""
    return run_sweep_cli(tmp)


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> Path:
    require_chromium()  # before the sweep: a clear failure where the browser is missing, not a minute later
    return make_store(tmp_path_factory.mktemp("ui_store"))


def shown_value(text: str, metric: str) -> float:
    m = re.search(rf"{re.escape(metric)}\s+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", text)
    assert m, f"no value shown beside {metric}"
    return float(m.group(1))


@pytest.mark.slow  # ~1 min with its fixture's sweep (65 s measured on 2 cores): in the default run and CI; -m ui alone
def test_mlflow_ui_shows_study_children_and_split_monitors(sweep_store, tmp_path):
    client = open_client(f"sqlite:///{sweep_store}")
    exp = client.get_experiment_by_name("segsweep")
    assert exp is not None, "the store has no 'segsweep' experiment"
    [parent] = client.search_runs([exp.experiment_id], "tags.`segsweep.role` = 'study'")
    study, pid = parent.info.run_name, parent.info.run_id
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{pid}'",
                                  order_by=["attributes.start_time ASC"])
    assert len(children) >= 2, f"study {study} has {len(children)} child runs"
    child_names = [c.info.run_name for c in children]
    child = children[0]
    for key in MONITORS:
        assert key in child.data.metrics, f"{key} was not logged to child run {child.info.run_name}"

    for old in ARTIFACTS.glob("mlflow_ui_*.png"):
        old.unlink()

    def screenshot(page: Browser, name: str) -> Path:
        path = page.screenshot(tmp_path / f"mlflow_ui_{name}.png")
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(path, ARTIFACTS / path.name)
        assert path.stat().st_size > 10_000, f"the {name} screenshot is suspiciously small"
        return path

    with mlflow_server(sweep_store, tmp_path / "mlflow-server.log") as base, Browser(tmp_path / "browser") as page:
        try:
            check_ui(page, base, exp.experiment_id, study, pid, child_names, child, screenshot)
        except Exception:
            with contextlib.suppress(Exception):
                screenshot(page, "failure")
            raise


def check_ui(page: Browser, base: str, exp_id: str, study: str, pid: str, child_names: list[str], child,
             screenshot) -> None:
    """The four views, in the order a user clicks through them; ``child`` is the trial whose pages are read."""
    exp_url = f"{base}/#/experiments/{exp_id}/runs"

    # 1. The experiment's runs list shows the study; expanding it lists its trials beneath it.
    page.goto(exp_url)
    page.wait_for(f"the study run {study!r} in the runs list", lambda t: study in t and "matching runs" in t)
    # Cosmetic, for the screenshots: the "Model training" view of MLflow 3 and no assistant side panel.
    page.click_text("[role=button]", "Model training")
    page.js("document.querySelector('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()")
    page.wait_for(f"the study run {study!r} in the runs list", lambda t: study in t and "matching runs" in t)
    expanded = page.js(f"""(() => {{
        const link = document.querySelector('a[href$="/runs/{pid}"]');
        const button = link && link.closest('[col-id]') && link.closest('[col-id]').querySelector('button');
        if (!button) return link ? 'no expander' : 'no link';
        button.click();
        return link.innerText.trim();
    }})()""")
    assert expanded == study, f"the study run's row: {expanded} (expected a link named {study!r} and an expander)"
    text = page.wait_for(f"the child runs {child_names} under the expanded study",
                         lambda t: all(n in t for n in child_names))
    assert study in text
    screenshot(page, "experiment")

    # 2. The study's run page names its child runs.
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{pid}")
    page.wait_for("the study's run page with its child runs",
                  lambda t: "Child runs" in t and study in t and all(n in t for n in child_names))

    # 3. A trial's overview shows the split monitors with their latest values and its parent study.
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{child.info.run_id}")
    text = page.wait_for(f"the split monitors {MONITORS} in {child.info.run_name}'s metrics table",
                         lambda t: child.info.run_name in t and all(k in t for k in MONITORS))
    for key in MONITORS:
        assert shown_value(text, key) == pytest.approx(child.data.metrics[key], rel=1e-4, abs=1e-6), key
    assert re.search(rf"Parent run\s+{re.escape(study)}", text), "the trial's page does not name its study"

    # 4. Its "Model metrics" tab charts each monitor (legend: "<run name> (<metric key>)").
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{child.info.run_id}/model-metrics")
    legends = [f"{child.info.run_name} ({k})" for k in MONITORS]
    page.wait_for(f"the charts {legends}", lambda t: all(lg in t for lg in legends))
    page.wait_js(f"a drawn line in the charts of {MONITORS}", f"""{json.dumps(legends)}.every(legend => {{
        const hit = document.evaluate(`//*[text()[contains(., "${{legend}}")]]`, document, null,
                                      XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue;
        let card = hit;
        while (card && !card.querySelector('.js-plotly-plot')) card = card.parentElement;
        return !!card && [...card.querySelectorAll('.js-plotly-plot .scatterlayer .trace path')]
            .some(p => (p.getAttribute('d') || '').length > 10);
    }})""")
    screenshot(page, "child_metrics")

    # 5. The study's own run shows the study's plots among its artifacts (the summary written by the sweeper).
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{pid}/artifacts/study/optimization_history.png")
    page.wait_for("the study's summary artifacts", lambda t: all(
        n in t for n in ("trials.csv", "optimization_history.png", "real_vs_synthetic.png")))
    # the preview is loaded as a blob URL: look for a decoded image of the plot's size (the logo is far smaller)
    page.wait_js("the optimisation-history plot rendered as an image", """[...document.querySelectorAll('img')]
        .some(img => img.complete && img.naturalWidth >= 400 && img.naturalHeight >= 300)""")
    screenshot(page, "study_plots")
