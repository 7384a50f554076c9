"""perfagent load_test's scenario, run by Locust: the same load, on more cores or machines.

This file never changes: the scenario (target, method, headers, body,
thresholds, the users over time) is data, read from a JSON file when Locust
starts, and nothing in it ever becomes code. perfagent's ``load_test`` with
``emit_locustfile`` returns both files; save them side by side as
``locustfile.py`` and ``scenario.json``, then:

One machine:   locust -f locustfile.py --headless
Distributed:   locust -f locustfile.py --headless --master --expect-workers N
               locust -f locustfile.py --worker --master-host MASTER   (on each worker)

Every process (master and workers) reads the scenario from, in this order:
``--perfagent-scenario FILE``, the file named by ``PERFAGENT_LOCUST_SCENARIO``,
or ``scenario.json`` beside this file. The ``Plan`` shape sets the users and
the run time (the plan, then up to ``drain_s`` for answers still in flight):
-u, -r, -t and --host are not needed.

``pin`` in the scenario holds the host name and the addresses perfagent
checked it at: the workers connect to those addresses and never look the name
up again (a second lookup could answer differently: DNS rebinding), and
refuse to resolve any other name. Set ``pin`` to null to let each worker
resolve the name itself, e.g. on machines where it resolves differently.

Locust users are closed loops: the open model (a ``pace`` in requests per
second per user) has each user send on its own schedule, catching up after a
slow answer; every request carries its intended send time, so the lag behind
schedule is known. With ``--perfagent-record FILE`` on the master, the workers
ship every response time there so percentiles are exact (perfagent's locust
engine uses this); without it, the thresholds are checked at the end from
Locust's own bucketed statistics and set the exit code. Redirects are never
followed: they must not carry the load to a host nobody checked.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import socket
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
from locust import LoadTestShape, events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.runners import MasterRunner, WorkerRunner

#: Where the scenario is when --perfagent-scenario is not given.
SCENARIO_ENV = "PERFAGENT_LOCUST_SCENARIO"
DEFAULT_SCENARIO = Path(__file__).with_name("scenario.json")

#: The scenario, filled in when Locust starts (see _load); read by the classes below.
SCENARIO: dict[str, Any] = {}
#: (seconds, users at start, users at end): each a linear ramp
PLAN: list[tuple[float, float, float]] = []

_METHOD = re.compile(r"[A-Z]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def scenario_path(option: str = "") -> Path:
    """The scenario file: the command-line option, the environment, or beside this file."""
    return Path(option or os.environ.get(SCENARIO_ENV) or DEFAULT_SCENARIO)


def read_scenario(path: Path) -> dict[str, Any]:
    """Load and check the scenario; a hand-edited file gets the checks perfagent made."""
    with path.open(encoding="utf-8") as fh:
        scenario = json.load(fh)
    if not re.fullmatch(r"https?://[^/?#\s]+", str(scenario.get("host", ""))):
        raise ValueError(f"{path}: host must be scheme://host[:port], e.g. http://127.0.0.1:8000")
    if not str(scenario.get("path", "")).startswith("/"):
        raise ValueError(f"{path}: path must start with /")
    if not _METHOD.fullmatch(str(scenario.get("method", ""))):
        raise ValueError(f"{path}: method must be an HTTP method such as GET")
    for name, value in dict(scenario.get("headers") or {}).items():
        # A line break in a header would start a header (or a request) of its own.
        if not _TOKEN.fullmatch(str(name)) or _HEADER_VALUE_BAD.search(str(value)):
            raise ValueError(f"{path}: header {name!r} is not a valid HTTP header")
    return scenario


# --------------------------------------------------------------------------- pinning


def pin_resolution(host: str, addresses: list[str]) -> None:
    """Resolve ``host`` to ``addresses`` only, and no other name at all, in this process.

    geventhttpclient (under FastHttpUser) resolves with ``gevent.socket.getaddrinfo``
    on every new connection; Locust's gevent monkey-patching makes the standard
    ``socket.getaddrinfo`` that same function. Both are replaced. Address
    literals are passed on: they involve no lookup.
    """
    pinned_host = host.lower().strip("[]")
    original = gevent.socket.getaddrinfo

    def getaddrinfo(name: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                    flags: int = 0) -> list[Any]:
        text = name.decode() if isinstance(name, bytes) else str(name or "")
        key = text.lower().strip("[]")
        if key != pinned_host:
            try:
                ipaddress.ip_address(key)
            except ValueError:
                raise socket.gaierror(
                    socket.EAI_NONAME,
                    f"{text} is not the load test's host {host}; it is not resolved") from None
            return original(name, port, family, type, proto, flags)
        number = int(port or 0)
        found = []
        for address in addresses:
            v6 = ":" in address
            fam = socket.AF_INET6 if v6 else socket.AF_INET
            if family not in (0, socket.AF_UNSPEC, fam):
                continue
            sockaddr = (address, number, 0, 0) if v6 else (address, number)
            found.append((fam, type or socket.SOCK_STREAM, proto or socket.IPPROTO_TCP, "",
                          sockaddr))
        if not found:
            raise socket.gaierror(socket.EAI_FAMILY,
                                  f"{host} has no address of the requested family")
        return found

    gevent.socket.getaddrinfo = getaddrinfo
    socket.getaddrinfo = getaddrinfo


# --------------------------------------------------------------------------- users


class Target(FastHttpUser):
    """One user sending the scenario's request; its host and timeouts come from the scenario."""

    host = None  # set from the scenario in _load
    intended = None  # when this user's schedule wants its current request sent

    def on_start(self) -> None:
        pace = SCENARIO["pace"]
        if pace:
            # A random phase within the pacing period: users that start together
            # would otherwise send in bursts.
            self.intended = time.time() + random.random() / pace
            gevent.sleep(self.intended - time.time())

    def wait_time(self) -> float:
        pace = SCENARIO["pace"]
        if not pace:
            return 0.0
        # The next slot on this user's schedule; after a slow answer, at once (it
        # catches up). A user never sends while it waits for an answer, though.
        self.intended += 1 / pace
        return max(self.intended - time.time(), 0.0)

    @task
    def hit(self) -> None:
        # Redirects are not followed: they must not take the load to another host.
        self.client.request(SCENARIO["method"], SCENARIO["path"], headers=SCENARIO["headers"],
                            data=SCENARIO["body"], allow_redirects=False,
                            context={"intended": self.intended})


class Plan(LoadTestShape):
    """Users along PLAN, then none until the answers in flight are in."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        spawn_rate = SCENARIO["spawn_rate"]
        for seconds, start, end in PLAN:
            if t < seconds:
                return round(start + (end - start) * t / seconds), spawn_rate
            t -= seconds
        if t < SCENARIO["drain_s"] and self.get_current_user_count() > 0:
            return 0, spawn_rate
        return None


# --------------------------------------------------------------------------- wiring


@events.init_command_line_parser.add_listener
def _options(parser: Any, **_kwargs: Any) -> None:
    parser.add_argument("--perfagent-scenario", default="",
                        help=f"the scenario JSON file (default: ${SCENARIO_ENV}, else "
                             "scenario.json beside this file)")
    parser.add_argument("--perfagent-record", default="",
                        help="master: append every response the workers report to this file")


@events.init.add_listener
def _load(environment: Any, **_kwargs: Any) -> None:
    """Read the scenario before any user starts, and pin the target's addresses."""
    options = environment.parsed_options
    SCENARIO.update(read_scenario(scenario_path(getattr(options, "perfagent_scenario", ""))))
    PLAN[:] = [(float(d), float(u0), float(u1)) for d, u0, u1 in SCENARIO["plan"]]
    Target.host = SCENARIO["host"]
    Target.network_timeout = Target.connection_timeout = float(SCENARIO["timeout"])
    pin = SCENARIO.get("pin")
    if pin:
        pin_resolution(str(pin["host"]), [str(a) for a in pin["addresses"]])
    # A stopped user finishes the request it is in, so that answer counts too.
    environment.stop_timeout = environment.stop_timeout or SCENARIO["drain_s"]


@events.init.add_listener
def _record(environment: Any, **_kwargs: Any) -> None:
    """Workers keep every response; the master appends them to --perfagent-record."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        pending: list[tuple[Any, ...]] = []

        def keep(start_time: float, response_time: float, response_length: int, response: Any,
                 exception: BaseException | None, context: dict[str, Any] | None,
                 **_kw: Any) -> None:
            status = getattr(response, "status_code", 0) or 0
            kind = None if exception is None else type(exception).__name__
            intended = (context or {}).get("intended")
            lag = None if intended is None else start_time - intended
            pending.append((start_time, response_time, status, response_length or 0, kind, lag))

        def ship(data: dict[str, Any], **_kw: Any) -> None:
            # rides on the stats report each worker sends every few seconds and at the end
            data["perfagent"] = pending[:]
            pending.clear()

        environment.events.request.add_listener(keep)
        environment.events.report_to_master.add_listener(ship)
    record = getattr(environment.parsed_options, "perfagent_record", "")
    if isinstance(runner, MasterRunner) and record:

        def collect(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
            if data.get("perfagent"):
                with open(record, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"worker": client_id, "rows": data["perfagent"]}) + "\n")

        environment.events.worker_report.add_listener(collect)


@events.quitting.add_listener
def check_thresholds(environment: Any, **_kwargs: Any) -> None:
    """Without a record, check the thresholds on Locust's statistics; a failure sets exit 1."""
    if getattr(environment.parsed_options, "perfagent_record", ""):
        return  # perfagent checks them on the exact response times it recorded
    stats = environment.stats.total
    observed = {
        "avg": stats.avg_response_time, "med": stats.median_response_time,
        "min": stats.min_response_time, "max": stats.max_response_time,
        "rate": stats.fail_ratio,
    }
    for expr in SCENARIO.get("thresholds", []):
        name, op, limit = _split(expr)
        if name.startswith("p("):
            value = stats.get_response_time_percentile(float(name[2:-1]) / 100)
        elif expr.startswith("http_reqs"):
            value = stats.total_rps if name == "rate" else stats.num_requests
        else:
            value = observed[name]
        ok = {"<": value < limit, "<=": value <= limit, ">": value > limit,
              ">=": value >= limit, "==": value == limit}[op]
        print(f"threshold {expr}: observed {value} -> {'ok' if ok else 'FAILED'}")
        if not ok:
            environment.process_exit_code = 1


def _split(expr: str) -> tuple[str, str, float]:
    """(statistic, operator, limit) of a k6-style threshold such as "p(95)<200"."""
    m = re.search(r"(p\([\d.]+\)|avg|mean|med|min|max|rate|count)\s*(<=|>=|==|<|>)\s*([\d.]+)",
                  expr)
    if m is None:
        raise ValueError(f"threshold {expr!r} is not understood")
    name = {"mean": "avg"}.get(m.group(1), m.group(1))
    return name, m.group(2), float(m.group(3))
