#!/usr/bin/env python3
"""An order service in front of stockq: Python's standard library only, nothing to install.

It places orders through `stockq serve` (POST /reserve with a hold, then confirm or cancel),
takes payment (a stub), refunds some orders after their deduction, and follows how each
reservation ended through the signed webhooks of `stockq relay`. The order rows live in a
SQLite file shared by its two processes:

    order_service.py webhooks --listen 127.0.0.1:8090     # the endpoint `stockq relay` POSTs to
    order_service.py run --orders 30                      # place orders; wait; check; summary
    order_service.py check                                # the check again, on the latest run

Each order has a story, chosen by the last digit of its number:

    ...7  payment_fails   the card is declined: the hold is cancelled      -> cancelled
    ...9  late_payment    paid after the hold ran out: confirm answers 409,
                          the reservation expired, the payment is refunded -> cancelled
    ...3  refund          paid and shipped, then returned: cancel after the
                          deduction gives the unit back                    -> refunded
    else  paid            paid, confirmed, deducted in MySQL               -> shipped

`run` and `check` print one JSON line per order and a summary line, and exit 0 only when
every order of the run reached the end its story says, its state is the highest version
seen of it (no stale answer or webhook overwrote a newer one) and stockq agrees
(GET /reservations/<id>).

Settings (flags win): STOCKQ_URL (http://127.0.0.1:8080), STOCKQ_API_TOKEN,
STOCKQ_WEBHOOK_SECRET, ORDERS_DB (orders.db). See README.md beside this file.
"""

import argparse
import concurrent.futures
import contextlib
import hashlib
import hmac
import http.server
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request

# ---------------------------------------------------------------------------------------
# The stories, and what each must end as: (order status, stockq state, payment).

STORIES = {
    "paid": ("shipped", "applied", "captured"),
    "payment_fails": ("cancelled", "cancelled", "declined"),
    "late_payment": ("cancelled", "expired", "refunded"),
    "refund": ("refunded", "released", "refunded"),
}


def story_of(number):
    """The story of order `number`, by its last digit."""
    return {7: "payment_fails", 9: "late_payment", 3: "refund"}.get(number % 10, "paid")


# A reservation's states that end it (docs/outcomes.md): nothing comes after them.
FINAL = {"applied", "released", "cancelled", "expired", "rejected", "duplicate"}

# What the shop calls an order whose reservation is in a state.
STATUS_OF = {
    "held": "reserved",  # the unit is ours until the hold's deadline: take payment
    "queued": "paid",  # confirmed; the deduction is on its way to MySQL
    "applied": "shipped",  # deducted in MySQL: ship it
    "cancelling": "cancelling",
    "releasing": "refunding",  # a refund on its way: the unit is back on sale already
    "released": "refunded",
    "cancelled": "cancelled",
    "expired": "cancelled",  # the hold ran out before payment
    "rejected": "failed",  # MySQL could not honour it
    "duplicate": "failed",
    "dead": "stuck",  # in stockq's dead letters: an operator's matter, not final
}

# ---------------------------------------------------------------------------------------
# The shop's database: orders, webhook deliveries seen (to deduplicate on `id`), and every
# status the shop was told (by an HTTP answer or a webhook), kept or dropped: the check's
# evidence that no older version overwrote a newer one.

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id           TEXT PRIMARY KEY,          -- the order id, and stockq's event id
    run          TEXT NOT NULL,
    story        TEXT NOT NULL,
    status       TEXT NOT NULL,             -- new, reserved, paid, shipped, refunded, ...
    payment      TEXT NOT NULL,             -- none, captured, declined, refunded
    stockq_state TEXT,                      -- the reservation's state, as of `version`
    version      INTEGER NOT NULL DEFAULT 0 -- the highest version seen of the reservation
);
CREATE TABLE IF NOT EXISTS deliveries (
    id          TEXT PRIMARY KEY,           -- the webhook's `id`: <event_id>@<version>
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
    order_id TEXT NOT NULL,
    source   TEXT NOT NULL,                 -- webhook, reserve, confirm, cancel
    version  INTEGER NOT NULL,
    state    TEXT NOT NULL,
    kept     INTEGER NOT NULL,              -- 1: newer than what the order knew
    at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (        -- webhooks refused: bad signature, bad body
    reason TEXT NOT NULL,
    at     REAL NOT NULL
);
"""


class Shop:
    """The order rows, in a SQLite file that the webhook process and `run` share."""

    def __init__(self, path):
        self.path = path
        db = sqlite3.connect(path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        db.executescript(SCHEMA)
        db.close()

    @contextlib.contextmanager
    def transaction(self, write=True):
        """One transaction on a connection of its own (SQLite connections stay in their
        thread). A write takes the lock from the start (BEGIN IMMEDIATE), so that two
        processes never deadlock upgrading a read; a busy database is waited for."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def create(self, order_id, run, story):
        with self.transaction() as db:
            db.execute(
                "INSERT INTO orders (id, run, story, status, payment) VALUES (?, ?, ?, 'new', 'none')",
                (order_id, run, story),
            )

    def order(self, order_id):
        with self.transaction(write=False) as db:
            return db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()

    def set(self, order_id, **fields):
        names = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE orders SET {names} WHERE id = ?", (*fields.values(), order_id))

    def apply(self, status, source, db=None):
        """Applies a status object (an HTTP answer) or an outcome (a webhook's body) to its
        order, by the rule of versions: keep the highest version seen per reservation, drop
        anything with a lower or equal one. Returns "kept", "dropped" or "unknown"."""
        if db is None:
            with self.transaction() as db:
                return self.apply(status, source, db)
        order = db.execute("SELECT * FROM orders WHERE id = ?", (status["event_id"],)).fetchone()
        if order is None:
            return "unknown"  # not one of ours (another service's reservation)
        version = int(status.get("version") or 0)  # outcomes from before versions: 0
        state = status["state"]
        kept = version > order["version"]
        db.execute(
            "INSERT INTO observations VALUES (?, ?, ?, ?, ?, ?)",
            (order["id"], source, version, state, int(kept), time.time()),
        )
        if not kept:
            known = f"v{order['version']} {order['stockq_state']}"
            log(f"{order['id']}: {source} says v{version} {state}, dropped: {known} is known")
            return "dropped"
        db.execute(
            "UPDATE orders SET stockq_state = ?, version = ?, status = ? WHERE id = ?",
            (state, version, STATUS_OF.get(state, order["status"]), order["id"]),
        )
        if state in ("released", "expired", "cancelled", "rejected", "duplicate"):
            self.refund_payment(order["id"], db)  # no unit for what the buyer paid, if paid
        return "kept"

    def refund_payment(self, order_id, db=None):
        """Gives a captured payment back, once (the provider's refund call would go here)."""
        if db is None:
            with self.transaction() as db:
                return self.refund_payment(order_id, db)
        db.execute("UPDATE orders SET payment = 'refunded' WHERE id = ? AND payment = 'captured'", [order_id])

    def take_webhook(self, delivery):
        """A verified webhook: once per `id` (the relay delivers at least once)."""
        with self.transaction() as db:
            seen = db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?)", (delivery["id"], time.time()))
            if seen.rowcount == 0:
                return "duplicate"
            return self.apply(delivery, "webhook", db)

    def refuse(self, reason):
        with self.transaction() as db:
            db.execute("INSERT INTO refused VALUES (?, ?)", (reason, time.time()))

    def wait_for(self, order_id, test, timeout):
        """Polls the order until `test(row)` holds (a webhook moved it); the row, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.order(order_id)
            if test(row):
                return row
            time.sleep(0.05)
        return None


# ---------------------------------------------------------------------------------------
# Payments: a stub. Every order whose number ends in 7 is declined; the others succeed,
# those ending in 9 only after their hold has run out.

def charge(order_id, number, late_by):
    """Takes payment for the order (the provider's call would go here): True when paid."""
    if number % 10 == 7:
        return False
    if number % 10 == 9:
        time.sleep(late_by)  # the buyer typed their card number slowly
    return True


# ---------------------------------------------------------------------------------------
# stockq's HTTP API (docs/http-api.md).

class Stockq:
    def __init__(self, url, token):
        self.url, self.token = url.rstrip("/"), token

    def call(self, method, path, body=None):
        """(HTTP status, JSON answer). 4xx and 5xx answers are answers too."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.load(answer), answer.headers
        except urllib.error.HTTPError as error:
            try:
                return error.code, json.loads(error.read() or b"{}"), error.headers
            finally:
                error.close()

    def reserve(self, product_id, order_id, buyer, hold):
        """POST /reserve under the order's id: retried as is on 503 (Redis did not answer,
        or the shard is being healed), which cannot take a second unit."""
        body = {"product_id": product_id, "qty": 1, "event_id": order_id, "buyer": buyer, "hold": hold}
        for _ in range(20):
            code, answer, headers = self.call("POST", "/reserve", body)
            if code != 503:
                return code, answer
            time.sleep(float(headers.get("Retry-After") or 0.5))
        return code, answer

    def confirm(self, order_id):
        return self.call("POST", f"/reservations/{order_id}/confirm")[:2]

    def cancel(self, order_id):
        return self.call("POST", f"/reservations/{order_id}/cancel")[:2]

    def status(self, order_id):
        return self.call("GET", f"/reservations/{order_id}")[:2]


# ---------------------------------------------------------------------------------------
# Placing an order, its story told by the stub of payments.

def place_order(shop, stockq, args, run, number):
    order_id = f"{run}-{number}"
    story = story_of(number)
    shop.create(order_id, run, story)
    log(f"{order_id} {story}")

    hold = args.late_hold if story == "late_payment" else args.hold
    code, answer = stockq.reserve(args.product, order_id, f"buyer-{number % 11}", hold)
    if code == 409 and answer.get("error") == "sold out":
        shop.set(order_id, status="sold_out")
        return
    # 201 reserved (held, version 1); 200 the retry of a reservation made already
    shop.apply(expect(code, answer, "reserve", ok=(200, 201)), "reserve")

    if not charge(order_id, number, late_by=parse_seconds(args.late_hold) + 0.5):
        log(f"{order_id}: payment declined, the hold is cancelled")
        shop.set(order_id, payment="declined")
        code, answer = stockq.cancel(order_id)  # the unit goes back on sale at once
        shop.apply(expect(code, answer, "cancel"), "cancel")  # cancelled, version 2
        return
    shop.set(order_id, payment="captured")

    code, answer = stockq.confirm(order_id)
    if code == 409:
        # "reservation ended": the hold ran out before payment. Its `expired` comes by
        # webhook (it may have come already); the payment goes back now.
        log(f"{order_id}: paid too late, confirm answered {code} {answer}: payment refunded")
        shop.refund_payment(order_id)
        return
    shop.apply(expect(code, answer, "confirm"), "confirm")  # queued, version 2

    if story == "refund":
        # returned after delivery: wait until a webhook says it was deducted (and shipped),
        # then cancel, which gives the unit back to stock (releasing, then released)
        order = shop.wait_for(order_id, lambda o: o["stockq_state"] in FINAL, args.timeout)
        if order is None:
            raise RuntimeError(f"{order_id}: no webhook ended it within {args.timeout}s")
        if order["stockq_state"] == "applied":
            log(f"{order_id}: shipped, returned: refund")
            code, answer = stockq.cancel(order_id)
            shop.apply(expect(code, answer, "cancel"), "cancel")  # releasing, version 4


def expect(code, answer, what, ok=(200,)):
    """The answer, when its HTTP status is one of `ok`; else the story cannot go on."""
    if code not in ok:
        raise RuntimeError(f"{what} answered {code} {answer}")
    return answer


# ---------------------------------------------------------------------------------------
# The check: each order against its story, against the highest version seen of it, and
# against stockq's own answer.

def check(shop, stockq, run):
    with shop.transaction(write=False) as db:
        orders = db.execute("SELECT * FROM orders WHERE run = ? ORDER BY rowid", (run,)).fetchall()
        highest = {
            row["order_id"]: (row["version"], row["state"])
            for row in db.execute(
                "SELECT order_id, version, state FROM observations o WHERE order_id LIKE ? AND version ="
                " (SELECT MAX(version) FROM observations WHERE order_id = o.order_id)",
                (run + "-%",),
            )
        }
        counted = db.execute(
            "SELECT source, kept, COUNT(*) AS n FROM observations WHERE order_id LIKE ? GROUP BY source, kept",
            (run + "-%",),
        ).fetchall()
        deliveries = db.execute("SELECT COUNT(*) FROM deliveries WHERE id LIKE ?", (run + "-%",)).fetchone()[0]
        refused = db.execute("SELECT COUNT(*) FROM refused").fetchone()[0]

    lines, failed, totals = [], 0, {}
    for order in orders:
        want_status, want_state, want_payment = STORIES[order["story"]]
        problems = []
        want = (want_status, want_state, want_payment)
        got = (order["status"], order["stockq_state"], order["payment"])
        if got != want:
            problems.append(f"expected {'/'.join(want)}, got {'/'.join(map(str, got))}")
        if highest.get(order["id"]) != (order["version"], order["stockq_state"]):
            problems.append(f"not the highest version seen: {highest.get(order['id'])}")
        code, truth = stockq.status(order["id"])
        if code != 200:
            problems.append(f"GET /reservations answered {code} {truth}")
        elif truth["state"] != order["stockq_state"] or truth.get("version") not in (None, order["version"]):
            problems.append(f"stockq says {truth['state']} version {truth.get('version')}")
        failed += bool(problems)
        totals[order["status"]] = totals.get(order["status"], 0) + 1
        lines.append(
            {
                "order": order["id"],
                "story": order["story"],
                "status": order["status"],
                "payment": order["payment"],
                "stockq_state": order["stockq_state"],
                "version": order["version"],
                "ok": not problems,
                "problems": problems,
            }
        )
    seen = {}
    for row in counted:
        by_source = seen.setdefault(row["source"], {"kept": 0, "dropped": 0})
        by_source["kept" if row["kept"] else "dropped"] += row["n"]
    summary = {
        "run": run,
        "ok": failed == 0 and len(orders) > 0,
        "orders": len(orders),
        "failed": failed,
        "statuses": totals,
        "seen": seen,  # per source: statuses kept, and dropped as not newer than what was known
        "webhooks": {"delivered": deliveries, "refused": refused},
    }
    return lines, summary


def print_check(lines, summary):
    for line in lines:
        print(json.dumps(line))
    print(json.dumps({"summary": summary}))
    sys.stdout.flush()
    return 0 if summary["ok"] else 1


# ---------------------------------------------------------------------------------------
# The webhook endpoint (docs/webhooks.md).

def verified(secret, header, body, tolerance=300):
    """`Stockq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: checked
    on the bytes as received, before parsing, in constant time, within 5 minutes."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, v1 = parts.get("t", ""), parts.get("v1", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, v1)


def webhook_server(shop, secret, address, path):
    class Webhook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != path:
                return self.answer(404)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not verified(secret, self.headers.get("Stockq-Signature", ""), body):
                shop.refuse("signature")
                return self.answer(401)
            try:
                delivery = json.loads(body)
            except ValueError:
                delivery = None
            if not isinstance(delivery, dict) or not {"id", "event_id", "state"} <= delivery.keys():
                shop.refuse("body")
                return self.answer(400)
            try:
                what = shop.take_webhook(delivery)
            except sqlite3.Error as error:
                log(f"webhook {delivery['id']}: {error}; the relay will try again")
                return self.answer(503)
            log(f"webhook {delivery['id']} {delivery['state']}: {what}")
            self.answer(204)  # any 2xx: delivered (a duplicate, or not ours, too)

        def answer(self, code):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass  # one line per delivery above is enough

    host, port = address.rsplit(":", 1)
    return http.server.ThreadingHTTPServer((host, int(port)), Webhook)


# ---------------------------------------------------------------------------------------
# The command line.

def log(message):
    print(message, file=sys.stderr, flush=True)


def parse_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(f"a duration such as 1s or 15m, not {text!r}")


def main():
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=env("ORDERS_DB", "orders.db"), help="the shop's SQLite file")

    hooks = commands.add_parser("webhooks", parents=[common], help="take the relay's webhooks until SIGTERM")
    hooks.add_argument("--listen", default="127.0.0.1:8090", help="host:port")
    hooks.add_argument("--path", default="/stockq", help="the path of STOCKQ_WEBHOOK_URL")
    hooks.add_argument("--secret", default=env("STOCKQ_WEBHOOK_SECRET"), help="the relay's secret")

    for name, what in (("run", "place orders, wait for their ends, check"), ("check", "check the latest run")):
        command = commands.add_parser(name, parents=[common], help=what)
        command.add_argument("--stockq", default=env("STOCKQ_URL", "http://127.0.0.1:8080"), help="serve's URL")
        command.add_argument("--token", default=env("STOCKQ_API_TOKEN"), help="serve's STOCKQ_API_TOKEN")
        command.add_argument("--timeout", type=float, default=60, help="seconds to wait for the ends")
        if name == "run":
            command.add_argument("--orders", type=int, default=30, help="how many orders to place")
            command.add_argument("--product", type=int, default=1, help="the product, one unit an order")
            command.add_argument("--hold", default="15m", help="the hold of an order being paid")
            command.add_argument("--late-hold", default="1s", help="the hold of a late payment's order")
            command.add_argument("--concurrency", type=int, default=8, help="orders placed at once")
        else:
            command.add_argument("--run", help="the run to check (default: the latest)")

    args = parser.parse_args()
    shop = Shop(args.db)

    if args.command == "webhooks":
        if not args.secret:
            parser.error("STOCKQ_WEBHOOK_SECRET (or --secret) is required")
        server = webhook_server(shop, args.secret.encode(), args.listen, args.path)
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        log(f"taking webhooks on http://{args.listen}{args.path}")
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return 0

    if not args.token:
        parser.error("STOCKQ_API_TOKEN (or --token) is required")
    stockq = Stockq(args.stockq, args.token)

    if args.command == "check":
        run = args.run
        if run is None:
            with shop.transaction(write=False) as db:
                latest = db.execute("SELECT run FROM orders ORDER BY rowid DESC LIMIT 1").fetchone()
            if latest is None:
                parser.error("no orders in " + args.db)
            run = latest["run"]
        return print_check(*check(shop, stockq, run))

    run = f"order-{time.time_ns() // 1_000_000}"  # ids of their own: event ids are used once
    log(f"run {run}: {args.orders} orders of product {args.product}")
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        numbers = range(1, args.orders + 1)
        placed = [pool.submit(place_order, shop, stockq, args, run, number) for number in numbers]
        for done in concurrent.futures.as_completed(placed):
            done.result()  # a story that could not be told stops the run here

    # every order now waits on the relay: for the webhook that ends its reservation
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with shop.transaction(write=False) as db:
            open_ = db.execute(
                "SELECT COUNT(*) FROM orders WHERE run = ? AND status != 'sold_out' AND"
                f" (stockq_state IS NULL OR stockq_state NOT IN ({','.join('?' * len(FINAL))}))",
                (run, *FINAL),
            ).fetchone()[0]
        if open_ == 0:
            break
        time.sleep(0.1)
    else:
        log(f"{open_} orders still open after {args.timeout}s: is `stockq relay` running?")
    return print_check(*check(shop, stockq, run))


if __name__ == "__main__":
    sys.exit(main())
