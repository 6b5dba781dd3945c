"""Whether a journal belongs to the account a broker trades, checked before resuming it.

Broker order ids belong to one account. Resumed against another account, a journal finds
none of its live orders there, and its walks would end each one on an account it never
traded while the orders stay live on the right one. `walkbook resume` refuses that before
anything is journaled.
"""

from __future__ import annotations

from collections.abc import Collection

import structlog

from journal import Journal

from .broker import Broker
from .errors import BrokerError, ForeignJournal, OrderNotFound
from .fsm import TERMINAL_STATES

__all__ = ["PROBES", "refuse_foreign_journal"]

PROBES = 3


async def _known(broker: Broker, broker_order_id: str, client_order_id: str | None) -> bool:
    """Whether the broker has the order under its id or, failing that, its client order id."""
    try:
        await broker.get_order(broker_order_id)
    except OrderNotFound:
        if client_order_id is None:
            return False
        return await broker.get_order_by_client_id(client_order_id) is not None
    return True


async def refuse_foreign_journal(
    journal: Journal, broker: Broker, probes: int = PROBES, listed: Collection[str] = ()
) -> None:
    """Raise ForeignJournal when the broker knows none of the first `probes` live broker
    orders the journal's in-flight orders acknowledged.

    One known order proves the account (ids are the account's): one in `listed` (the ids of
    a listing of open orders just read) costs nothing, else a journal of this account costs
    one read. A broker that cannot answer proves nothing either way: the walk's own
    reconcile, with its retries, takes over.
    """
    rows = journal.orders(unless_state=TERMINAL_STATES)
    if any(r["live_broker_order_id"] in listed for r in rows):
        return
    live = [r for r in rows if r["live_broker_order_id"]][:probes]
    for row in live:
        try:
            if await _known(broker, row["live_broker_order_id"], row["live_client_order_id"]):
                return
        except BrokerError as exc:
            structlog.get_logger("walkbook").warning("ownership.unchecked", error=exc.message)
            return
    if live:
        named = ", ".join(f"{r['live_broker_order_id']} ({r['symbol']})" for r in live)
        raise ForeignJournal(
            f"journal {journal.location}: the broker has none of the live orders it acknowledged "
            f"({named}): the journal belongs to another account; resume it against that one",
            broker_order_ids=[r["live_broker_order_id"] for r in live],
        )
