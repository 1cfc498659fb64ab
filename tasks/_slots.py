"""Heavy-stage slots as Prefect global concurrency limits with leases, when a Prefect server is configured.

One limit of size 1 per slot, named `<prefix>-<index>` (`shadowft-slot-<host>-0`, ...): the limit names
which slot, hence which GPUs, a stage holds, and the UI's concurrency page lists each slot with its
holder (the task run). The holder's lease is renewed while it runs; a holder that dies (SIGKILL, a lost
node) stops renewing and the server's repossessor frees the slot once the lease has expired
(`LEASE_S` plus the repossessor's loop, 15 s by default).

Which mechanism, measured against Prefect 3.8.8:
- `SHADOWFT_SLOTS=prefect` and `PREFECT_API_URL` set (a `prefect server start` or Prefect Cloud, whose
  repossessor frees a dead holder's slot): these leased limits.
- Otherwise (and by default): the file locks below.
- No API URL (Prefect's ephemeral API, started inside each `shadowft run`): the file locks of
  `shadowft.resources.SlotPool`. An ephemeral server does not run the repossessor service
  (`prefect.server.services.repossessor` is not marked `run_in_ephemeral`) and keeps leases in its own
  memory, so a killed run's slot would never come back; a file lock goes with its holder.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator

from shadowft.resources import Slot

#: Lease length in seconds (the server's minimum): how long a dead holder keeps its slot at most,
#: before the repossessor's next pass.
LEASE_S = 60.0


class _QuietBusySlots(logging.Filter):
    """Prefect's slot-acquisition service logs an ERROR for every refused attempt (HTTP 423: the slot is
    busy). `LeasedSlots.acquire` tries each slot without waiting, so while it polls, a busy slot is the
    expected answer, not an error: those records are dropped (any other failure is re-raised by `_try`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.args, tuple) and record.args[:1] == ("ConcurrencySlotAcquisitionWithLeaseService",)
        )


#: Opt-in: slots as leased Prefect limits (`SHADOWFT_SLOTS=prefect`); file locks otherwise.
SLOTS_ENV = "SHADOWFT_SLOTS"


def leased_slots_wanted() -> bool:
    """True when slots are leased Prefect limits: asked for (`SHADOWFT_SLOTS=prefect`) and flow runs
    report to a Prefect server (PREFECT_API_URL). Opt-in, because a killed holder's slot comes back only
    where the server runs its repossessor (`prefect server start`, Prefect Cloud): a server without it
    (an ephemeral or test harness API) keeps the slot taken, and the next run waits forever (measured:
    the Ctrl-C-then-rerun test hung), while a file lock goes with its holder."""
    import os

    from prefect.settings import PREFECT_API_URL

    return os.environ.get(SLOTS_ENV, "").strip().lower() == "prefect" and bool(PREFECT_API_URL.value())


def default_prefix() -> str:
    """Slots belong to a machine's GPUs: one set of limits per host, whatever store the runs use."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname().lower())
    return f"shadowft-slot-{host}"


class LeasedSlots:
    """Hands out `slots` through one leased Prefect concurrency limit each (made on first use)."""

    def __init__(self, slots: list[Slot], prefix: str | None = None, poll_s: float = 0.5) -> None:
        self.slots = slots
        self.prefix = prefix or default_prefix()
        self.poll_s = poll_s

    def name(self, slot: Slot) -> str:
        return f"{self.prefix}-{slot.index}"

    def ensure_limits(self) -> None:
        """Create the per-slot limits that do not exist yet (limit 1 each); existing ones are kept."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectAlreadyExists

        with get_client(sync_client=True) as client:
            for slot in self.slots:
                try:
                    client.upsert_global_concurrency_limit_by_name(self.name(slot), limit=1)
                except ObjectAlreadyExists:  # made by a stage starting at the same moment
                    pass

    @contextlib.contextmanager
    def _try(self, slot: Slot, holder: object | None) -> Iterator[bool]:
        """Hold `slot` for the block if it is free now (yield True), else yield False at once."""
        import httpx
        from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency.sync import concurrency

        cm = concurrency(
            self.name(slot),
            occupy=1,
            max_retries=0,  # a busy slot answers 423 once: try the next one instead of waiting here
            lease_duration=LEASE_S,
            strict=True,
            holder=holder,  # type: ignore[arg-type]
            raise_on_lease_renewal_failure=False,  # a transient API error must not kill a long training
        )
        try:
            cm.__enter__()
        except ConcurrencySlotAcquisitionError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423):
                raise
            busy = True
        else:
            busy = False
        if busy:
            yield False
            return
        try:
            yield True
        except BaseException as exc:
            if not cm.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            cm.__exit__(None, None, None)

    @contextlib.contextmanager
    def acquire(self, on_wait: Callable[[], None] | None = None) -> Iterator[Slot]:
        """Block until a slot is free; hold it (under a renewed lease) for the block."""
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
        from prefect.context import TaskRunContext

        self.ensure_limits()
        ctx = TaskRunContext.get()
        holder = ConcurrencyLeaseHolder(type="task_run", id=ctx.task_run.id) if ctx is not None else None
        waited = False
        quiet = _QuietBusySlots()
        service_log = logging.getLogger("prefect._internal.concurrency")
        service_log.addFilter(quiet)
        try:
            while True:
                for slot in self.slots:
                    with self._try(slot, holder) as held:
                        if held:
                            service_log.removeFilter(quiet)
                            yield slot
                            return
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(self.poll_s)
        finally:
            service_log.removeFilter(quiet)
