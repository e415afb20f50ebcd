"""`lmforge serve`: every flow as a Prefect deployment, `retrain` on a cron schedule.

The deployments' default parameters are params.yaml's values, so the Prefect UI's run form
shows them, typed. A Prefect server is started on 127.0.0.1 unless one answers at the URL.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from components.config import Params
from components.errors import LmforgeError

log = logging.getLogger(__name__)


def server_is_up(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(api_url: str, timeout_s: float = 120.0) -> subprocess.Popen:
    """`prefect server start` on the URL's host and port; returns once it answers."""
    url = urlparse(api_url)
    if url.hostname not in ("127.0.0.1", "localhost"):
        raise LmforgeError(f"orchestration.prefect_api_url {api_url}: lmforge starts servers on 127.0.0.1 only; "
                           "start a remote server yourself and pass --no-server")
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(url.port or 4200)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not server_is_up(api_url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise LmforgeError(f"Prefect server at {api_url} did not start within {timeout_s:.0f} s")
        time.sleep(1.0)
    log.info("Prefect server started: UI at %s", api_url.removesuffix("/api"))
    return process


def deployments(params: Params, params_file: str):
    """One deployment per flow; retrain scheduled by cron, paused unless the schedule is active."""
    from flows.pipeline import FLOWS

    defaults = {"params": params.model_dump(mode="json"), "params_file": str(Path(params_file).resolve())}
    result = []
    for name, flow in FLOWS.items():
        parameters = dict(defaults)
        if name == "finetune":
            parameters["tasks"] = ["sst2"]
        if name == "retrain":
            result.append(flow.to_deployment(name=f"lmforge-{name}", parameters=parameters,
                                             cron=params.orchestration.retrain_cron,
                                             paused=not params.orchestration.retrain_schedule_active,
                                             tags=["lmforge"]))
        else:
            result.append(flow.to_deployment(name=f"lmforge-{name}", parameters=parameters, tags=["lmforge"]))
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
        server = start_server(api_url)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            serve(*deployments(params, params_file))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
