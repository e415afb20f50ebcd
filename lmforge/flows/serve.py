"""`lmforge serve`: every flow as a Prefect deployment, `retrain` on a cron schedule.

A deployment carries no copy of params.yaml: a run reads the file when it starts, so an edit made
while `lmforge serve` runs is what the next run (from the UI or the schedule) uses. The run form
shows each flow's few typed fields first (finetune: tasks, model, init, learning_rate, epochs,
force), then `overrides` (`section.key=value`, as `-S` does) and the whole `params` object, for that
run; what a run sets is written to params.yaml. A Prefect server is started on 127.0.0.1 unless one
answers at the URL.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from lmforge.components.config import Params
from lmforge.components.errors import LmforgeError

log = logging.getLogger(__name__)


def server_is_up(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(api_url: str, timeout_s: float = 120.0) -> subprocess.Popen:
    """`prefect server start` on the URL's host and port; returns once it answers."""
    process = launch_server(api_url)
    wait_for_server(process, api_url, timeout_s)
    return process


def launch_server(api_url: str) -> subprocess.Popen:
    """`prefect server start` on the URL's host and port, without waiting for it to answer."""
    url = urlparse(api_url)
    if url.hostname not in ("127.0.0.1", "localhost"):
        raise LmforgeError(f"orchestration.prefect_api_url {api_url}: lmforge starts servers on 127.0.0.1 only; "
                           "start a remote server yourself and pass --no-server")
    # The UI asks the server where its API is, and the server says PREFECT_API_URL or port 4200, not
    # the port it serves on: on any other port the UI would show nothing but "Can't connect".
    env = {"PREFECT_UI_API_URL": api_url, **os.environ}
    return subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(url.port or 4200)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def wait_for_server(process: subprocess.Popen, api_url: str, timeout_s: float = 120.0) -> None:
    """Return once the server answers; one that exits or stays silent past `timeout_s` is killed and reported."""
    deadline = time.monotonic() + timeout_s
    while not server_is_up(api_url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise LmforgeError(f"Prefect server at {api_url} did not start within {timeout_s:.0f} s")
        time.sleep(1.0)
    log.info("Prefect server started: UI at %s", api_url.removesuffix("/api"))


# The deployments, defined once: deployment name -> (flow, parameters it starts with). `lmforge serve`
# serves these; prefect.yaml declares the same for `prefect deploy` to a work pool (tests/test_serve.py
# checks that the two agree).
DEPLOYMENTS: dict[str, tuple[str, dict]] = {
    "lmforge-pipeline": ("pipeline", {}),
    "lmforge-pretrain": ("pretrain", {}),
    "lmforge-finetune": ("finetune", {"tasks": ["sst2"]}),
    "lmforge-evaluate_and_register": ("evaluate_and_register", {}),
    "lmforge-retrain": ("retrain", {}),
}
SCHEDULED = "lmforge-retrain"  # on orchestration.retrain_cron


def deployments(params: Params, params_file: str):
    """One deployment per entry of DEPLOYMENTS; retrain scheduled by cron, paused unless the schedule is active."""
    from lmforge.flows.pipeline import FLOWS

    result = []
    for name, (flow_name, parameters) in DEPLOYMENTS.items():
        parameters = {**parameters, "params_file": str(Path(params_file).resolve())}
        schedule = ({"cron": params.orchestration.retrain_cron, "paused": not params.orchestration.retrain_schedule_active}
                    if name == SCHEDULED else {})
        result.append(FLOWS[flow_name].to_deployment(name=name, parameters=parameters, tags=["lmforge"], **schedule))
    return result


def serve_flows(params: Params, params_file: str, start: bool = True) -> None:
    """Serve the deployments until interrupted (Ctrl-C), against the configured Prefect server."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = params.orchestration.prefect_api_url
    server = None
    if not server_is_up(api_url):
        if not start:
            raise LmforgeError(f"no Prefect server answers at {api_url} (orchestration.prefect_api_url)")
        server = launch_server(api_url)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            # Built while the server starts (importing the flows takes seconds); served once it answers.
            served = deployments(params, params_file)
            if server is not None:
                wait_for_server(server, api_url)
            serve(*served)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
