"""Named, seeded line scenarios: each is a line condition or a fault, with what must hold.

A scenario configures the plant, the camera and the PLC in the simulator process, and at most one
fault on the controller's own side: on its inference path, on its process (stopped, killed; the
controller then runs as its own `lineinspect run` process, as at a line), or on its journal. Every scenario must end
with nothing lost (sim/judge.py); `failsafe_allowed` names the fail-safe reasons its fault explains.
Not here: running (sim/line.py, sim/runner.py) or scoring (sim/judge.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from sim.camera import NO_FAULTS, CameraFaults
from sim.hmi_panel import PanelPlan
from sim.journal_faults import JournalFault
from sim.plant import PlantConfig
from sim.s7_proxy import LinkFaults
from sim.slow_inference import InferenceFaults

NO_LINK_FAULTS = LinkFaults()
NO_INFERENCE_FAULTS = InferenceFaults()


@dataclass(frozen=True)
class ProcessFault:
    """A signal to the controller's process once a third of the parts have their outcome."""

    signal: Literal["SIGSTOP", "SIGKILL"]
    seconds: float = 0.0
    """SIGSTOP: continued (SIGCONT) after this long. SIGKILL: started again after this long."""
    times: int = 1
    """More than once: at seeded random part counts between a tenth and nine tenths of the run,
    whatever the controller is doing then (starting up included)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    plant: dict[str, object] = field(default_factory=dict)
    """Overrides of PlantConfig."""
    camera: CameraFaults = NO_FAULTS
    plc_restart_at_s: float | None = None
    link: LinkFaults = NO_LINK_FAULTS
    kill_actor_after: int | None = None
    inference: InferenceFaults = NO_INFERENCE_FAULTS
    """Faults on the controller's inference path (sim/slow_inference.py)."""
    process: ProcessFault | None = None
    failsafe_allowed: frozenset[str] = frozenset()
    """Fail-safe reasons this scenario's fault explains; any other fail-safe fails it."""
    alarms: frozenset[str] = frozenset()
    """The controller alarms this scenario's fault must raise exactly once and clear exactly once;
    any other alarm fails it (one fault, one alarm: no flapping)."""
    alarms_stay: frozenset[str] = frozenset()
    """Alarms this scenario's condition must raise exactly once and that stay raised to the end
    (the condition lasts: a dimmed light does not brighten by itself)."""
    controller: dict[str, dict[str, object]] = field(default_factory=dict)
    """Overrides of the controller's line config, by section: what commissioning such a line
    would set (each with its reason where the scenario is declared)."""
    min_parts: int = 0
    """A run of this scenario has at least this many parts (its fault needs the time)."""
    panel: PanelPlan | None = None
    """An operator panel on the HMI (sim/hmi_panel.py): it must see every part's result, and does
    what its plan says (halt and reset)."""
    hmi_flood: bool = False
    """A hostile panel network floods the controller's OPC UA server while the line runs (sim/hmi_flood.py)."""
    journal: JournalFault | None = None
    """A fault on the controller's journal: its disk, its file, a second controller (sim/journal_faults.py)."""
    shadow: bool = False
    """The controller asks the PLC for shadow mode from the start: the gate follows the existing
    inspection (sim/plant.py's reference), vision is recorded beside it; the run ends with the
    shadow report, which must agree exactly with the judge's count from the ground truth."""

    def plant_config(self, base: PlantConfig) -> PlantConfig:
        return replace(base, **self.plant)  # type: ignore[arg-type]



SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("steady", "constant 1 m/s, random pitch"),
    Scenario("shadow", "a shift in shadow mode: the gate follows the existing inspection (8 % escapes, 3 % false "
             "rejects at the start, half as many again by the end), vision is recorded beside it",
             shadow=True),
    Scenario("new-defect", "a defect type the model was never trained on (dent) is most of the defects, and there "
             "are more of them: what the feedback loop starts from (python -m sim.feedback_loop)",
             plant={"new_defect": (4, 0.0, 0.7), "defect_rate": 0.25}),
    Scenario("drift", "the light dims by 20 % over the run and, from mid-run, half the defective parts have a "
             "defect type the model was never trained on (dent): the drift alarm must rise and stay up",
             plant={"lighting": (1.0, 0.8), "new_defect": (4, 0.5, 0.5)}, alarms_stay=frozenset({"drift"}),
             min_parts=1200),
    Scenario("speed-ramps", "speed ramps between 40 % and 150 % of nominal",
             plant={"speed_profile": ((1.0, 1.5), (3.0, 0.4), (5.0, 1.2), (7.0, 0.6), (9.0, 1.0))}),
    Scenario("stop-and-go", "the conveyor stops twice for 2 s with parts in flight",
             plant={"speed_profile": ((2.0, 0.0), (4.0, 1.0), (6.0, 0.0), (8.0, 1.0))}),
    Scenario("encoder-wrap", "the encoder count wraps through 2^32 mid-run",
             plant={"encoder_start": 2**32 - 30_000}),
    Scenario("trigger-bursts", "every 20th part starts a burst of 8 at the smallest pitch",
             plant={"bursts": (20, 8)}),
    Scenario("camera-drops", "1 % of frames lost, and a burst of 5 lost every 150 exposures",
             camera=CameraFaults(drop_rate=0.01, drop_burst_every=150), failsafe_allowed=frozenset({"no_frame"})),
    Scenario("spurious-frames", "3 % of exposures followed by an extra frame from a trigger glitch",
             camera=CameraFaults(spurious_rate=0.03), failsafe_allowed=frozenset({"no_frame"})),
    Scenario("plc-restart", "the PLC restarts mid-run: new epoch, zeroed data block",
             plc_restart_at_s=4.0, failsafe_allowed=frozenset({"epoch_changed", "not_ready", "no_frame"})),
    Scenario("s7-slow-jittery", "S7 traffic delayed 20 ± 10 ms each way and fragmented",
             link=LinkFaults(latency_ms=(20.0, 10.0), fragment=True),
             # One exchange cycle takes ~90 ms here, so triggers become visible two or three at a
             # time: an actor must take them all (admission still refuses any that would be late).
             # A request's round trip reaches 60 ms plus reassembly: a line on such a link sets its
             # request timeout above that (100 ms timed out now and then: a reconnect, then the
             # PLC's watchdog for our heartbeat).
             controller={"inference": {"max_in_flight_per_actor": 4}, "plc": {"request_timeout_ms": 250.0}},
             # The link eats ~40 % of the 400 ms budget; at the tail of its jitter some parts cannot
             # be on time: refused before inference (no_budget) or dropped unwritten (late). Until
             # the conveyor has run steadily for a few reads a trigger's instant is known only to
             # half a round trip, too coarse to give the first parts their frames (no_frame).
             failsafe_allowed=frozenset({"no_budget", "late", "no_frame"})),
    Scenario("plc-link-silent", "the PLC link goes silent for 10 s with the socket open",
             plant={"parts": 400}, link=LinkFaults(silent_at_s=4.0, silent_s=10.0),
             # The link alarm; and our heartbeat is held too, so the PLC's watchdog trips. (Triggers the
             # ring lost in the silence were decided by then: no ring-overrun alarm for them.)
             alarms=frozenset({"plc_link", "plc_watchdog"}),
             # After the silence the ring's last 16 triggers arrive at once: admission refuses some.
             # Verdicts written just before it reach parts the PLC decides after its watchdog
             # tripped (our heartbeat is held too): those are recorded as the gate decided them.
             failsafe_allowed=frozenset({"plc_link_lost", "ring_overrun", "late", "no_frame", "not_ready",
                                         "plc_write_failed", "no_budget", "inference_failed",
                                         "watchdog_tripped"})),
    Scenario("slow-inference", "5 % of inferences take three times their budget",
             inference=InferenceFaults(slow_rate=0.05, slow_factor=3.0),
             # Those parts have no verdict by their deadline: late. Nothing else may fail safe.
             failsafe_allowed=frozenset({"late"})),
    Scenario("controller-stalled", "the controller's process is stopped (SIGSTOP) for 2 s mid-run",
             process=ProcessFault("SIGSTOP", 2.0), alarms=frozenset({"plc_watchdog"}),
             # Its heartbeat stops, the PLC's watchdog trips and rejects every part meanwhile:
             # written verdicts decided then (watchdog_tripped), open parts (late, no_frame), and
             # triggers decided before the controller could read again (plc_link_lost).
             failsafe_allowed=frozenset({"watchdog_tripped", "late", "no_frame", "no_budget", "plc_link_lost"})),
    Scenario("controller-killed", "the controller's process is killed (SIGKILL) mid-run and started again",
             plant={"parts": 400},  # a restart (local Ray, model) takes ~6 s: line time to show the recovery
             process=ProcessFault("SIGKILL", 0.0),
             # The restarted controller finds the watchdog tripped: raised, then cleared by its heartbeat.
             alarms=frozenset({"plc_watchdog"}),
             # Decided while no controller ran, or written just before the kill and decided after
             # the watchdog tripped (controller_down); in flight at the restart, their frames lost
             # (no_frame, late, not_ready); the watchdog still tripped at the first writes.
             failsafe_allowed=frozenset({"controller_down", "watchdog_tripped", "no_frame", "late", "not_ready",
                                         "no_budget", "plc_link_lost"})),
    Scenario("hmi-flood", "10,000-node browses, 50 sessions at once and sessions never closed, against the HMI",
             hmi_flood=True,
             # The attacker runs in the idle class, in a session of its own at nice 19 (it stands
             # for other machines): on a loaded machine its first round takes seconds.
             min_parts=400,
             # The HMI runs in its own process with limits: the verdict path must not notice, so no
             # fail-safe and no alarm is explained by the flood. The HMI is on even with --no-hmi.
             controller={"hmi": {"enabled": True}}),
    Scenario("hmi-panel", "a panel subscribed to every part's result event over a secure session",
             panel=PanelPlan(), controller={"hmi": {"enabled": True}}),
    Scenario("hmi-operator", "an operator halts inspection from the HMI for 3 s, then resets it",
             panel=PanelPlan(halt_at_s=4.0, halt_for_s=3.0), controller={"hmi": {"enabled": True}},
             min_parts=300,  # 15 s: the halt at 4 s, the reset 3 s later, then inspecting again
             # Halted, the controller tells the PLC it is not ready: every part then is rejected.
             failsafe_allowed=frozenset({"not_ready", "plc_rejected"})),
    Scenario("controller-kill-loop", "the controller's process is killed (SIGKILL) 10 times at random moments",
             plant={"parts": 2000},  # restarts take ~6 s: room for ten of them
             # As controller-killed, ten times, some while it is still starting: nothing may be lost.
             process=ProcessFault("SIGKILL", 0.0, times=10), alarms=frozenset({"plc_watchdog"}),
             failsafe_allowed=frozenset({"controller_down", "watchdog_tripped", "no_frame", "late", "not_ready",
                                         "no_budget", "plc_link_lost"})),
    Scenario("worker-killed", "an inference worker is killed mid-run (Ray restarts it)",
             # The fault's fail-safe reasons are allowed wherever a worker is killed.
             kill_actor_after=60, alarms=frozenset({"inference"})),
    # The journal's disk fails for 2 s: records it refuses wait in memory and land when it recovers;
    # meanwhile the controller is not ready (the PLC rejects), and parts whose record could not be
    # made durable fail safe. Every trigger still ends with exactly one record, as the gate did.
    Scenario("disk-full", "the journal's filesystem is full for 2 s",
             journal=JournalFault("disk-full"), alarms=frozenset({"journal"}),
             failsafe_allowed=frozenset({"journal_failed", "not_ready", "late", "no_budget", "plc_rejected"})),
    Scenario("journal-readonly", "the journal's ext4 fails and turns read-only; checked and mounted again 2 s later",
             journal=JournalFault("read-only"), alarms=frozenset({"journal"}),
             failsafe_allowed=frozenset({"journal_failed", "not_ready", "late", "no_budget", "plc_rejected"})),
    Scenario("disk-stall", "the journal's filesystem is frozen (fsfreeze) for 2 s",
             journal=JournalFault("disk-stall"), alarms=frozenset({"journal_stalled"}),
             failsafe_allowed=frozenset({"journal_failed", "not_ready", "late", "no_budget", "plc_rejected"})),
    Scenario("journal-corrupt", "the journal found at start has 64 KiB of garbage in its middle",
             # Moved aside at start with the journal alarm, cleared by the first record of the fresh one.
             journal=JournalFault("corrupt"), alarms=frozenset({"journal"})),
    Scenario("second-controller", "a second controller is started on the running line",
             # Refused before it connects to anything: the running controller must not notice.
             journal=JournalFault("second-controller")),
]}  # fmt: skip
