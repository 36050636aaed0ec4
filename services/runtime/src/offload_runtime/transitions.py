"""The job state machine as data (DESIGN §4): every allowed transition, in one table.

`JobStore` executes a row of `TRANSITIONS` as one Lua compare-and-set: the
job must be in one of the row's `sources` (a status, and which attempt it
must hold), and, when the row `requires_run`, owned by the caller's run.
Only then are its fields written, its event appended, and its side effects
(the unstarted index, expiry, the cancel notice) applied.

A `source` status of `none` means no job exists under the id yet.
"""

from dataclasses import dataclass
from enum import Enum

from offload_contracts import EventKind, JobStatus

NONE = "none"
"""The status the store's script reports for an id that holds no job."""


class Attempt(Enum):
    """Which attempt the job must hold, relative to the caller's attempt n."""

    ANY = "any"
    PREVIOUS = "previous"  # n - 1: a start of attempt n finds the job as attempt n - 1 left it
    SAME = "same"  # n: the caller's own attempt


class Unstarted(Enum):
    """What the transition does to the shard's set of accepted, not yet started jobs."""

    KEEP = ""
    ADD = "add"
    REMOVE = "rem"


class Expiry(Enum):
    """What the transition does to the time-to-live of the job's keys."""

    KEEP = "keep"
    RETENTION = "retention"  # finished: kept for the retention period, then gone
    PERSIST = "persist"  # live again (a replay): no expiry


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    sources: tuple[tuple[str, Attempt], ...]
    target: JobStatus
    event: EventKind
    requires_run: bool = False
    """The job must be owned by the caller's run (a duplicate delivery's run is not)."""
    takes_run: bool = False
    """The caller's run becomes the job's owner."""
    unstarted: Unstarted = Unstarted.KEEP
    expiry: Expiry = Expiry.KEEP
    notify_cancel: bool = False
    """Tell the workers to stop the job (it may be running somewhere)."""

    def allowed(self, attempt: int) -> str:
        """The sources as the store's script reads them: `status:attempt` pairs joined by `|`."""
        pairs = []
        for status, which in self.sources:
            if which is Attempt.ANY:
                pairs.append(f"{status}:*")
            elif which is Attempt.PREVIOUS:
                pairs.append(f"{status}:{attempt - 1}")
            else:
                pairs.append(f"{status}:{attempt}")
        return "|".join(pairs)


_W, _D, _A = JobStatus.WAITING.value, JobStatus.DELAYED.value, JobStatus.ACTIVE.value
_FRESH_START = ((_W, Attempt.PREVIOUS), (_D, Attempt.PREVIOUS))

TRANSITIONS: dict[str, Transition] = {
    row.name: row
    for row in (
        Transition(
            "create",
            ((NONE, Attempt.ANY),),
            JobStatus.WAITING,
            EventKind.QUEUED,
            unstarted=Unstarted.ADD,
        ),
        Transition(
            "start",
            _FRESH_START,
            JobStatus.ACTIVE,
            EventKind.STARTED,
            takes_run=True,
            unstarted=Unstarted.REMOVE,
        ),
        # A redelivered message may also take over a job left `active` (its worker died
        # mid-run) or `delayed` (its worker died after recording the retry, before acking).
        Transition(
            "take_over",
            (*_FRESH_START, (_A, Attempt.SAME), (_D, Attempt.SAME)),
            JobStatus.ACTIVE,
            EventKind.STARTED,
            takes_run=True,
            unstarted=Unstarted.REMOVE,
        ),
        Transition(
            "progress",
            ((_A, Attempt.SAME),),
            JobStatus.ACTIVE,
            EventKind.PROGRESS,
            requires_run=True,
        ),
        Transition(
            "complete",
            ((_A, Attempt.SAME),),
            JobStatus.COMPLETED,
            EventKind.COMPLETED,
            requires_run=True,
            expiry=Expiry.RETENTION,
        ),
        Transition(
            "retry",
            ((_A, Attempt.SAME),),
            JobStatus.DELAYED,
            EventKind.RETRYING,
            requires_run=True,
        ),
        Transition(
            "fail_run",
            ((_A, Attempt.SAME),),
            JobStatus.FAILED,
            EventKind.FAILED,
            requires_run=True,
            unstarted=Unstarted.REMOVE,
            expiry=Expiry.RETENTION,
        ),
        # Without a run: the gateway could not hand the job over, or an operator gave up on it.
        Transition(
            "fail",
            ((_W, Attempt.ANY), (_D, Attempt.ANY), (_A, Attempt.ANY)),
            JobStatus.FAILED,
            EventKind.FAILED,
            unstarted=Unstarted.REMOVE,
            expiry=Expiry.RETENTION,
        ),
        Transition(
            "cancel",
            ((_W, Attempt.ANY), (_D, Attempt.ANY), (_A, Attempt.ANY)),
            JobStatus.CANCELLED,
            EventKind.CANCELLED,
            unstarted=Unstarted.REMOVE,
            expiry=Expiry.RETENTION,
            notify_cancel=True,
        ),
        # A dead letter replayed by an operator: attempts start over.
        Transition(
            "replay",
            ((JobStatus.FAILED.value, Attempt.ANY),),
            JobStatus.WAITING,
            EventKind.QUEUED,
            unstarted=Unstarted.ADD,
            expiry=Expiry.PERSIST,
        ),
    )
}
