"""The Prefect UI in a real browser: `lmforge serve` (starting its own Prefect server), headless
Chromium driven by Selenium through the lmforge-finetune deployment's Run > Custom run, one typed
field changed in the form, and the fine-tuning run it starts completes having trained with that value.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped without them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import STARTUP_S, free_port, make_project, run_stage_in

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver on PATH "
                       "(apt-get install chromium chromium-driver; .ci/run installs them)"),
]
# A closed network refuses Chromium's background connections (updates, sync, QUIC probes): off.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1800"]
LEARNING_RATE = 0.0042  # the field the test changes: params.yaml (and so the default) says 0.001


@pytest.fixture
def browser(tmp_path, monkeypatch):
    """Headless Chromium with a fresh profile, driven through Debian's chromedriver (no Selenium Manager
    download: SE_OFFLINE and explicit paths)."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the network's answers, for answers()
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def api(base: str, path: str, body: dict | None = None):
    """A Prefect REST call: GET, or POST with a JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for_deployment(base: str, served: subprocess.Popen, log: Path) -> dict:
    """The lmforge-finetune deployment, once `lmforge serve` has started its server and published it."""
    deadline = time.monotonic() + STARTUP_S
    while True:
        assert served.poll() is None, f"lmforge serve exited:\n{log.read_text()}"
        try:
            return api(base, "/deployments/name/finetune/lmforge-finetune")
        except (urllib.error.URLError, OSError):  # no server yet, or no deployment yet (404)
            assert time.monotonic() < deadline, \
                f"no lmforge-finetune deployment within {STARTUP_S} s:\n{log.read_text()}"
            time.sleep(1.0)


def answers(driver, path_end: str) -> list[int]:
    """The HTTP statuses the page got from URLs ending in `path_end` since the last call (Chromium's
    performance log, which each call empties)."""
    messages = (json.loads(entry["message"])["message"] for entry in driver.get_log("performance"))
    return [m["params"]["response"]["status"] for m in messages
            if m["method"] == "Network.responseReceived" and m["params"]["response"]["url"].endswith(path_end)]


def run_custom_finetune(driver, deployment_page: str, learning_rate: float) -> None:
    """What a user does on the deployment's page: Run > Custom run, learning_rate set, Submit."""
    from selenium.common.exceptions import (ElementClickInterceptedException, ElementNotInteractableException,
                                            StaleElementReferenceException)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The UI renders as its data arrives: an element found may be replaced, or covered, before the click.
    wait = WebDriverWait(driver, 60, ignored_exceptions=(
        ElementClickInterceptedException, ElementNotInteractableException, StaleElementReferenceException))

    def click(xpath: str) -> None:
        wait.until(lambda _: driver.find_element(By.XPATH, xpath).click() or True)

    driver.get(deployment_page)
    click("//button[normalize-space()='Run']")
    click("//*[@role='menuitem'][normalize-space()='Custom run']")
    # The field is `float | None`: its "float" tab turns the None into a number input.
    field = "//label[starts-with(normalize-space(), 'learning_rate')]/ancestor::div[contains(@class, 'group')][1]"
    click(f"{field}//button[@role='tab'][normalize-space()='float']")
    wait.until(lambda _: driver.find_element(By.XPATH, f"{field}//input").send_keys(str(learning_rate)) or True)
    wait.until(lambda _: driver.find_element(By.XPATH, f"{field}//input").get_attribute("value") == str(learning_rate))
    # The server answers 503 when SQLite is busy with another writer (the runner marks its deployments
    # ready on every poll), and the UI then leaves the form as it was, saying nothing. Prefect's own
    # client retries such answers, waiting between tries; so does the user here, submitting again.
    answers(driver, "/create_flow_run")  # emptied: only the answers to Submit count
    for attempt in range(10):  # backing off: on a loaded machine SQLite stays busy for seconds (seen in CI)
        click("//button[@type='submit'][normalize-space()='Submit']")
        [status, *_] = wait.until(lambda _: answers(driver, "/create_flow_run"))
        if status != 503:
            break
        time.sleep(min(1 + 2 * attempt, 10))
    page = driver.find_element(By.TAG_NAME, "body").text
    assert status in (200, 201), f"the server refused the run ({status}):\n{page}"
    # An accepted run takes the browser back to the deployment's page.
    wait.until(lambda _: not driver.current_url.split("?")[0].endswith("/run"))


def flow_runs(base: str, deployment_id: str) -> list[dict]:
    return api(base, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})


def finished_run(base: str, deployment_id: str, log: Path, timeout_s: float = 300) -> dict:
    """The deployment's one flow run, once it has reached a final state."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = flow_runs(base, deployment_id)
        if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert len(runs) == 1, runs
            return runs[0]
        assert time.monotonic() < deadline, f"no finished flow run within {timeout_s:.0f} s: {runs}\n{log.read_text()}"
        time.sleep(1.0)


def stop(served: subprocess.Popen) -> None:
    """Wait for `lmforge serve` to end after its Ctrl-C; kill it if it has not within a minute."""
    try:
        served.wait(timeout=60)
    except subprocess.TimeoutExpired:
        served.kill()
        served.wait()


def test_a_custom_run_from_the_ui_trains_with_the_value_set_in_its_form(tmp_path, browser):
    import mlflow

    root = make_project(tmp_path, finetune_runs={}, prompt_runs={})
    base = f"http://127.0.0.1:{free_port()}/api"
    # `lmforge serve` starts a server of its own: the shared test server's UI looks for its API on port
    # 4200, and another test's `lmforge serve` there publishes deployments of the same names. A Prefect
    # home of its own; the runner asks for new runs every second, not every ten.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PREFECT_API_URL": base,
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = tmp_path / "serve.log"
    served = subprocess.Popen(["lmforge", "serve", "-S", f"orchestration.prefect_api_url={base}"], cwd=root, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        try:
            # While it starts: the data and a pretrained BERT (one step) for the run to start from.
            run_stage_in(root, "ingest")
            run_stage_in(root, "tokenizer")
            run_stage_in(root, "pretrain-bert", "pretrain.bert.train.max_steps=1", "tracking.enabled=false")
            tracking_uri = yaml.safe_load((root / "params.yaml").read_text())["tracking"]["uri"]
            mlflow.MlflowClient(tracking_uri=tracking_uri).search_experiments()  # its store made now, not in the run
            deployment = wait_for_deployment(base, served, log)

            # The page in the UI a browser gets by default (the server's / redirects to /v2).
            page = f"{base.removesuffix('/api')}/v2/deployments/deployment/{deployment['id']}"
            run_custom_finetune(browser, page, LEARNING_RATE)

            flow_run = finished_run(base, deployment["id"], log)
        finally:
            served.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it (serve stops its server meanwhile)
        assert flow_run["state_type"] == "COMPLETED", f"{flow_run['state']}\n{log.read_text()}"
        assert flow_run["parameters"]["learning_rate"] == LEARNING_RATE  # a number, as typed in the form
        assert flow_run["parameters"]["tasks"] == ["sst2"]  # the deployment's default, left as it was

        # Recorded for DVC: params.yaml says what the run trained with, and lists the run.
        params = yaml.safe_load((root / "params.yaml").read_text())
        assert params["finetune"]["train"]["learning_rate"] == LEARNING_RATE
        assert "bert-sst2" in params["finetune"]["runs"]
        # And it trained with it: the fine-tuning run's logged params.
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name("lmforge-finetune")
        [trained] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'finetune-bert-sst2'")
        assert float(trained.data.params["train.learning_rate"]) == LEARNING_RATE
    finally:
        stop(served)
