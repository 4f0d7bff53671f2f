"""What an operator may do to the running line, and the state a panel shows for it: the Machine
Vision companion spec's `VisionStateMachine` (OPC 40100-1) mapped onto the controller.

States (the spec's names):
- `Preoperational`: starting, not yet ready to inspect for the first time;
- `Halted`: an operator halted inspection (Halt); only Reset leaves it;
- `Error`: a dependency of the verdict path is unhealthy (PLC, camera, inference, journal);
- `Operational.Ready`: healthy, but an operator stopped continuous inspection (Stop);
- `Operational.ContinuousExecution`: inspecting every part.
Only ContinuousExecution lets the controller tell the PLC `ready`: in every other state the PLC
rejects every part (fail-safe), which is what halting a line's inspection must mean.

Shadow mode is the PLC's: the controller only asks for it (`request_shadow`, interface bit 1); the
PLC reports whether it is in it, and the panel shows both.

Pure: no I/O. The controller applies commands and journals them (controller/app.py); the HMI only
forwards them with who asked (hmi/).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.alarms import AlarmError, Alarms


class VisionState(StrEnum):
    PREOPERATIONAL = "Preoperational"
    HALTED = "Halted"
    ERROR = "Error"
    READY = "Operational.Ready"
    CONTINUOUS = "Operational.ContinuousExecution"


class Action(StrEnum):
    """Every command a panel can send; the HMI's role matrix says who may send which."""

    HALT = "halt"
    RESET = "reset"
    START_CONTINUOUS = "start_continuous"
    STOP = "stop"
    REQUEST_SHADOW = "request_shadow"
    """argument "on" or "off"."""
    ACKNOWLEDGE = "acknowledge"
    """argument: the alarm's name."""
    CONFIRM = "confirm"
    """argument: the alarm's name."""
    FLAG_RESULT = "flag_result"
    """argument: "epoch/seq true_class[ note]": this part's verdict was wrong, it was `true_class`."""
    PREPARE_RECIPE = "prepare_recipe"
    """argument: the recipe's id. Loads its model beside the serving one, checks it answers, then
    switches between two parts (the inference service's hot swap)."""


class Refused(Exception):
    """A command that does not apply now (wrong state, bad argument): its text is the operator's answer."""


@dataclass
class OperatorControl:
    halted: bool = False
    stopped: bool = False
    shadow_requested: bool = False

    def state(self, *, started: bool, healthy: bool) -> VisionState:
        if self.halted:
            return VisionState.HALTED
        if not started:
            return VisionState.PREOPERATIONAL
        if not healthy:
            return VisionState.ERROR
        return VisionState.READY if self.stopped else VisionState.CONTINUOUS

    @property
    def allows_inspection(self) -> bool:
        return not self.halted and not self.stopped

    def apply(self, action: Action, argument: str, *, state: VisionState, alarms: Alarms, by: str) -> str:
        """Apply one command; returns what it did, or raises Refused saying why not."""
        match action:
            case Action.HALT:
                if self.halted:
                    raise Refused("already halted")
                self.halted = True
                return "halted: the PLC rejects every part until Reset"
            case Action.RESET:
                if state not in (VisionState.HALTED, VisionState.ERROR):
                    raise Refused(f"Reset applies in Halted or Error, not in {state.value}")
                self.halted = False
                return "reset: inspecting again once every dependency is healthy"
            case Action.START_CONTINUOUS:
                if state is not VisionState.READY:
                    raise Refused(f"StartContinuous applies in Operational.Ready, not in {state.value}")
                self.stopped = False
                return "continuous inspection started"
            case Action.STOP:
                if state is not VisionState.CONTINUOUS:
                    raise Refused(f"Stop applies in Operational.ContinuousExecution, not in {state.value}")
                self.stopped = True
                return "stopped: the PLC rejects every part until StartContinuous"
            case Action.REQUEST_SHADOW:
                if argument not in ("on", "off"):
                    raise Refused(f"shadow mode is 'on' or 'off', not {argument!r}")
                self.shadow_requested = argument == "on"
                return f"shadow mode requested {argument} (the PLC decides and reports it)"
            case Action.PREPARE_RECIPE | Action.FLAG_RESULT:
                raise Refused(f"{action.value} is done by the controller, not by the operator rules")
            case Action.ACKNOWLEDGE | Action.CONFIRM:
                try:
                    if action is Action.ACKNOWLEDGE:
                        alarms.acknowledge(argument, by)
                    else:
                        alarms.confirm(argument, by)
                except AlarmError as exc:
                    raise Refused(str(exc)) from None
                return f"alarm {argument} {'acknowledged' if action is Action.ACKNOWLEDGE else 'confirmed'}"

