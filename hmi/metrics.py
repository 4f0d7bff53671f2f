"""A Prometheus `/metrics` endpoint, served by the HMI process (never the controller's): the same
status snapshots and part results the panels get, in the text exposition format (version 0.0.4).

Counters come from the controller's own counts in each status snapshot, so they are exact and equal
the journal's (a scrape after the last part gives the run's totals). Histograms come from the part
results (trigger → frame, inference, trigger → outcome decided): a result the HMI never received
(`lineinspect_hmi_results_dropped_total`) is missing from them, and they start again with the HMI
process, as Prometheus expects of a restarted target.

The server is deliberately small: GET /metrics only, one request per connection, at most
`MAX_CONNECTIONS` at once, `READ_TIMEOUT_S` to send the request line and headers, 8 KiB of them.

Not here: the OPC UA server (hmi/server.py); what the numbers mean (controller/status.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections.abc import Iterable

from controller.errors import ControllerError
from controller.operator import VisionState
from controller.status import LineStatus, PartResult

_log = logging.getLogger(__name__)

BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 400.0, 1000.0)
MAX_CONNECTIONS = 8
READ_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value_ms: float) -> None:
        self.counts[bisect_left(BUCKETS_MS, value_ms)] += 1
        self.sum += value_ms
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterable[str]:
        cumulative = 0
        for bound, n in zip((*BUCKETS_MS, float("inf")), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            yield f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {cumulative}'
        yield f"{name}_sum{{{labels}}} {self.sum:.3f}"
        yield f"{name}_count{{{labels}}} {self.count}"


class Metrics:
    def __init__(self) -> None:
        self.status = LineStatus()
        self.stages = {stage: Histogram() for stage in ("frame", "inference", "total")}
        self.results = 0
        self.results_dropped = 0

    def on_status(self, status: LineStatus) -> None:
        self.status = status

    def on_results(self, results: Iterable[PartResult]) -> None:
        for r in results:
            if r.corrected:  # the same part again: its times were counted with its first result
                continue
            self.results += 1
            for stage, value in (("frame", r.frame_ms), ("inference", r.inference_ms), ("total", r.total_ms)):
                if value is not None:
                    self.stages[stage].observe(value)

    def render(self) -> str:
        s = self.status
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{{{labels}}} {value:g}" if labels else f"{name} {value:g}" for labels, value in samples)

        model = f'model_version="{_escape(s.model_version)}"'
        metric("lineinspect_parts_total", "counter", "Triggers by recorded outcome.",
               [(f'outcome="{o}"', v) for o, v in (("pass", s.passes), ("reject", s.rejects),
                                                   ("failsafe", s.failsafe))])  # fmt: skip
        metric("lineinspect_failsafe_total", "counter", "Fail-safe rejects by reason.",
               [(f'reason="{_escape(r)}"', n) for r, n in sorted(s.failsafe_by_reason.items())])  # fmt: skip
        metric("lineinspect_triggers_total", "counter", "Triggers seen (decided or still open).", [("", s.triggers)])
        out.append("# HELP lineinspect_stage_latency_ms Part latency by stage: frame (trigger seen -> frame), "
                   "inference, total (trigger seen -> outcome decided).")  # fmt: skip
        out.append("# TYPE lineinspect_stage_latency_ms histogram")
        for stage, histogram in self.stages.items():
            out.extend(histogram.lines("lineinspect_stage_latency_ms", f'stage="{stage}"'))
        metric("lineinspect_latency_p99_ms", "gauge", "Trigger -> verdict written, p99 of the last parts.",
               [("", s.latency_p99_ms)])  # fmt: skip
        metric("lineinspect_inference_in_flight", "gauge", "Parts waiting for or in inference.",
               [("", s.inference_in_flight)])  # fmt: skip
        metric("lineinspect_plc_connected", "gauge", "1 while the S7 link to the PLC works.", [("", s.plc_connected)])
        metric("lineinspect_ready", "gauge", "The ready bit the controller sends the PLC.", [("", s.ready_bit)])
        metric("lineinspect_vision_state", "gauge", "The Machine Vision state (1 for the current one).",
               [(f'state="{state.value}"', state.value == s.vision_state) for state in VisionState])  # fmt: skip
        metric("lineinspect_shadow_mode", "gauge", "1 while the PLC is in shadow mode.", [("", s.shadow_mode)])
        metric("lineinspect_gate_decisions_total", "counter", "Parts decided at the gate by vision's verdict against "
               "the existing inspection's (both_pass, both_reject, vision_only_reject, reference_only_reject, "
               "no_reference).", [(f'agreement="{_escape(k)}"', v) for k, v in sorted(s.shadow_counts.items())
                                  if k not in ("decided", "shadow")])  # fmt: skip
        metric("lineinspect_alarm_active", "gauge", "1 while an alarm is active, 0 while latched after it cleared.",
               [(f'alarm="{_escape(c.name)}",severity="{c.severity.value}"', c.active)
                for c in s.conditions])  # fmt: skip
        metric("lineinspect_alarm_raised_total", "counter", "Times each latched alarm was raised.",
               [(f'alarm="{_escape(c.name)}"', c.raised) for c in s.conditions])  # fmt: skip
        metric("lineinspect_plc_rejects_total", "counter", "Rejects the PLC executed, by why.",
               [('kind="vision"', s.plc_rejects_vision), ('kind="failsafe"', s.plc_rejects_failsafe)])  # fmt: skip
        metric("lineinspect_plc_verdicts_late_total", "counter", "Verdicts the PLC received too late.",
               [("", s.plc_verdicts_late)])  # fmt: skip
        metric("lineinspect_plc_watchdog_trips_total", "counter", "Watchdog trips counted by the PLC.",
               [("", s.plc_watchdog_trips)])  # fmt: skip
        metric("lineinspect_model_info", "gauge", "The model in use.", [(model, 1)])
        metric("lineinspect_log_lines_dropped_total", "counter", "Log lines dropped: the log writer fell behind.",
               [("", s.log_lines_dropped)])  # fmt: skip
        metric("lineinspect_hmi_results_total", "counter", "Part results the HMI received.", [("", self.results)])
        metric("lineinspect_hmi_results_dropped_total", "counter", "Part results the HMI process dropped unshown.",
               [("", self.results_dropped)])  # fmt: skip
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """`async with MetricsServer(metrics, "127.0.0.1:9464") as server: server.url`."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.metrics, self.host, self.port = metrics, host or "127.0.0.1", int(port)
        self._server: asyncio.Server | None = None
        self._open = 0
        self.served = 0
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def __aenter__(self) -> MetricsServer:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_REQUEST_BYTES)
        except OSError as exc:
            raise ControllerError(f"metrics endpoint cannot listen on {self.host}:{self.port}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                self.refused += 1
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                self.refused += 1
                return
            method, path, *_ = [*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
            if method != "GET" or path.split("?")[0] != "/metrics":
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            else:
                body = self.metrics.render().encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))  # fmt: skip
                self.served += 1
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        finally:
            self._open -= 1
            writer.close()
