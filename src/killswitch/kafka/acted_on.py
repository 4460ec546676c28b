"""Whether an alert read from the topic was acted on already: the consumer's duplicate rules.

Asked before the age and freshness rules (those are for alerts not acted on yet, and a dead
letter would say this one was not): a reset whose id the engine journaled, a kill or cancel
whose id it accepted (the same scope and mode where it still holds the trigger to compare
with), or one a reset on another replica released while this one did not know the id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from killswitch.events import EventType
from killswitch.handlers.alerts import Alert, AlertAction
from killswitch.kill.port import EnginePort
from killswitch.model import Mode, Trigger

# The consumer's decisions: logged under its name, as before they had a module of their own.
log = logging.getLogger("killswitch.kafka.alerts")


class ClusterLatch(Protocol):
    """The latch replicas share (`kafka.replicas.LatchReplicator`), as the consumer asks it."""

    last_error: str

    def released_in_cluster(self, trigger_id: str) -> bool | None:
        """True if a reset in the cluster released this id; None while that is unknown."""
        ...


class _Counts(Protocol):
    duplicates: int


@dataclass(eq=False)
class ActedOn:
    """The duplicate rules over the engine's journaled ids and the cluster's latch."""

    engine: EnginePort
    cluster: ClusterLatch | None
    stats: _Counts
    emit: Callable[..., None]

    def __call__(self, alert: Alert, now_ms: int) -> bool:
        """Whether `alert` is a re-read (a crash before its commit, offsets lost) of one acted
        on, as the engine's journal says, in this life or an earlier one: a reset whose id was
        applied, a kill or cancel whose id was accepted (the same scope and mode, where the
        engine still holds the trigger to compare with), or one a reset on another replica
        released (`_released_in_cluster`). Asked before the age and freshness
        rules: those are for alerts not acted on yet, and a dead letter would say this one was
        not. Resets and triggers are apart: a kill reusing a reset's id is a new kill."""
        if alert.action is AlertAction.RESET:
            if not self.engine.reset_applied(alert.id):
                return False
            self.stats.duplicates += 1
            log.info("duplicate reset ignored alert_id=%s (applied before)", alert.id)
            self.emit(EventType.DUPLICATE, reset_id=alert.id, source="kafka")
            return True
        if alert.action not in (AlertAction.KILL, AlertAction.CANCEL):
            return False
        trigger = alert.to_trigger(received_ms=now_ms)
        earlier = self.engine.trigger(trigger.id)
        if earlier is not None:
            if not same_alert(earlier, trigger):
                # The id reused for another alert: not acted on (`expired` if too old,
                # else `_submit` dead-letters it as `id_conflict`).
                return False
            self.stats.duplicates += 1
            log.info("duplicate alert ignored alert_id=%s (acted on before)", trigger.id)
            self.emit(
                EventType.DUPLICATE, trigger_id=trigger.id, source=trigger.source, compared=True
            )
            return True
        if not self.engine.accepted(trigger.id):
            # new here (or older than the journal's ids): unless the cluster reset it
            return self._released_in_cluster(trigger)
        # Accepted, no longer held (reset, a finished one-shot, a restart, past KILLS_KEPT):
        # nothing is left to compare the scope and mode with. A duplicate, whatever it asks.
        # The id is taken, so a different alert could not be acted on either way (`id_conflict`
        # and `expired` would only word the refusal); a re-read of the alert acted on is what
        # at-least-once delivery makes common (offsets lost replay the topic from its start),
        # and dead-lettering it would say "not acted on" of a kill someone has since reset,
        # inviting a resend that latches again a scope released on purpose. Not silent: the
        # log line and the event say the content was not compared.
        self.stats.duplicates += 1
        log.info(
            "duplicate alert ignored alert_id=%s (accepted before, no longer held: scope and "
            "mode not compared)",
            trigger.id,
        )
        self.emit(EventType.DUPLICATE, trigger_id=trigger.id, source=trigger.source, compared=False)
        return True

    def _released_in_cluster(self, trigger: Trigger) -> bool:
        """Whether a reset on another replica released this alert's kill (latched and reset
        there while this replica was down, or before its own consumer read it): then it was
        acted on, and killing it again would cancel orders placed since that reset. Ids are
        unique per alert, so the scope is not compared (the topic keeps released ids only)."""
        if self.cluster is None or not self.cluster.released_in_cluster(trigger.id):
            return False  # not released, or unknown yet: acted on (`_submit` alarms)
        self.stats.duplicates += 1
        log.warning(
            "alert not acted on: a reset on another replica released it alert_id=%s "
            "(latched and reset in the cluster before this replica read it)",
            trigger.id,
        )
        self.emit(
            EventType.DUPLICATE,
            trigger_id=trigger.id,
            source=trigger.source,
            compared=False,
            released_in_cluster=True,
        )
        return True

    def alarm_if_cluster_unknown(self, trigger: Trigger) -> None:
        """Say so when a kill is acted on before the latch topic was read: a reset on another
        replica may have released it (then the replicator releases it here once it reads)."""
        cluster = self.cluster
        if (
            cluster is None
            or trigger.mode is not Mode.KILL
            or cluster.released_in_cluster(trigger.id) is not None
        ):
            return
        error = cluster.last_error or "latch topic not read yet"
        log.error(
            "kill acted on before the latch topic was read, a reset of it on another replica "
            "is not known here (released once the topic is read) alert_id=%s error=%s",
            trigger.id,
            error,
        )
        self.emit(
            EventType.ALARM,
            account="latch_topic",
            kind="latch_unread_at_kill",
            error=error,
            trigger_ids=[trigger.id],
        )


def same_alert(earlier: Trigger, trigger: Trigger) -> bool:
    """Whether `trigger` repeats `earlier` (same id): the same scope and mode."""
    return (earlier.scope, earlier.mode) == (trigger.scope, trigger.mode)
