"""BingX spot connector: signed REST under per-endpoint budgets, and the gzip listenKey stream.

Facts from `reference/exchange-apis.md` §3 [BX-DOC]. Where BingX differs from the others:

* Every answer is an envelope `{"code", "msg", "debugMsg", "data"}`; `code != 0` is an error
  whatever the HTTP status. `classify` maps (status, code, msg) through `dialect.BINGX`, with
  message rules for the codes the venue reuses (100421 is "timestamp mismatch" and also "cancel
  fail, order not exist"; 100400 is "invalid parameter" and also "...FILLED or CANCELLED
  already..."). An answer no rule classifies is `OutcomeUnknown`: re-read, then decide.
* Limits are per UID and API (cancel 5/s; cancelOrders, cancelOpenOrders, oco/cancel 2/s;
  cancelAllAfter 1/s; oco/openOrderList 5/s) and per IP and API (3/s on trade endpoints, 2/s
  on the others), the IP ones shared by every account behind our IP [reference §3.2, §3.5].
  Each is a `SlidingBudget`; the IP ones are shared by every connector to the same host in the
  process. A 100410 carries no Retry-After: we wait until the epoch in its text when it has one,
  else back off briefly with jitter, and block that API (UID and IP budgets) meanwhile. A 418
  bans the IP: nothing is sent from any account behind it until the end its text names, else
  for 2 min, doubling while the ban goes on (BingX: minutes to tens of minutes). More
  than 20 errors on one API in 480 s lock it: `ErrorCounter` keeps count, and cancels take a
  route that answers "gone" inside a success (`cancelOrders` with `process=1`) when near.
* Order ids are 19-digit integers sent as JSON numbers: they are kept as ints by the parser and
  turned into strings, never floats.
* `openOrders` returns at most 2,000 rows: a read that hits the cap is never presented as
  complete (`Snapshot.complete`); the snapshot reads per symbol over the symbols seen and the
  venue's own symbol list, within the budgets, or says it is incomplete.
* What the sources leave open (§3.7) is learned, not assumed (`LearnedPaths`): whether
  `cancelOpenOrders` covers OCO legs (from its answer and the next read), whether a leg's id
  cancels its list through `cancelOrders` (from a re-read of the open lists after the batch),
  which shape `oco/openOrderList` has (both are read; an unknown one is `OutcomeUnknown`).
"""

from killswitch.exchanges.bingx.connector import BingxExchange
from killswitch.exchanges.bingx.errors import classify, fail_is_gone
from killswitch.exchanges.bingx.parse import (
    MalformedAnswer,
    decode_frame,
    num_str,
    order_id_str,
    parse_execution_report,
    parse_order,
    stream_error,
)
from killswitch.exchanges.bingx.venue import (
    CANCEL_OPEN_ORDERS,
    CANCEL_ORDERS,
    CAPABILITIES,
    ENDPOINT_RPS,
    EXECUTION_REPORT,
    IP_RPS,
    OCO_CANCEL,
)

__all__ = [
    "CANCEL_OPEN_ORDERS",
    "CANCEL_ORDERS",
    "CAPABILITIES",
    "ENDPOINT_RPS",
    "EXECUTION_REPORT",
    "IP_RPS",
    "OCO_CANCEL",
    "BingxExchange",
    "MalformedAnswer",
    "classify",
    "decode_frame",
    "fail_is_gone",
    "num_str",
    "order_id_str",
    "parse_execution_report",
    "parse_order",
    "stream_error",
]
