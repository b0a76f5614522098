"""What the Lua scripts cost Redis, in instructions, counted by callgrind.

Run by scripts/lua-cost.sh, which starts a private redis-server under
`valgrind --tool=callgrind` and passes its port. Times move by a factor of two on a shared
machine from one minute to the next; instruction counts do not (the same scripts give the
same counts to within about 1%), so two versions of a script are compared by these.

It replays what a sale does to Redis, on a queue of its own:
  reserve  N reservations through reserve.lua (100 products, a buyer each), pipelined:
           instructions per call;
  claim    the N entries claimed by claim.lua in batches of B: instructions per entry;
  settle   each batch acknowledged as applied by settle.lua, as a worker does, either the
           oldest claim first (the usual order: the batch is at the tail of processing) or the
           newest first (at the head) or every other one (in the middle): instructions per
           entry.
Each figure is everything the server did meanwhile (protocol, script, commands), between a
zeroing of the counters and a dump.

  --old-layout  the scripts of commit 684cb9c, before reservation records: reserve.lua takes
                4 keys and 3 arguments, claim.lua 4 keys, settle.lua 7 keys and 3 arguments
                per entry.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import redis


def script_source(source, name):
    """A script as Redis receives it: from a stockq binary (`stockq scripts NAME`, assembled
    with its shared steps) or, for a checkout older than those, from a directory of .lua files."""
    if os.path.isdir(source):
        with open(os.path.join(source, f"{name}.lua")) as f:
            return f.read()
    return subprocess.run([source, "scripts", name], check=True, capture_output=True, text=True).stdout


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a stockq binary, or a directory holding reserve.lua, claim.lua and settle.lua")
    p.add_argument("--port", type=int, required=True, help="the callgrind-run redis-server")
    p.add_argument("--out", required=True, help="callgrind's --callgrind-out-file prefix")
    p.add_argument("--events", type=int, default=4000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--order", choices=["oldest", "newest", "alternate"], default="oldest")
    p.add_argument("--old-layout", action="store_true")
    p.add_argument("--previous", action="store_true",
                   help="the scripts of commit c87a803: settle.lua takes 11 arguments per acknowledgement")
    p.add_argument("--products", type=int, default=100, help="products reserved, in turn (1: one hot product)")
    p.add_argument("--reserve-only", action="store_true", help="count the reservations only")
    p.add_argument("--group", type=int, default=0,
                   help="reserve through reserve_group.lua, this many reservations per call (0: reserve.lua, one per call)")
    a = p.parse_args()

    r = redis.Redis(port=a.port)
    pid = r.info("server")["process_id"]

    def zero():
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)

    def count():
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        dump = max(glob.glob(f"{a.out}.{pid}.*"), key=os.path.getmtime)
        with open(dump) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        sys.exit(f"lua_cost: no totals in {dump}")

    q = "{luacost}"
    k = lambda s: f"{q}:{s}"
    for key in r.scan_iter(match=f"{q}:*", count=1000):
        r.delete(key)
    sha = {}
    for name in ("reserve", "claim", "settle") + (("reserve_group",) if a.group else ()):
        sha[name] = r.script_load(script_source(a.source, name))
    for product in range(1, a.products + 1):
        r.set(k(f"stock:{product}"), 10**9)

    zero()
    pipe = r.pipeline(transaction=False)
    group_keys, group_args = [], []
    for i in range(a.events if a.group else 0):
        product, event_id = i % a.products + 1, f"order-{i}"
        group_keys += [k(f"stock:{product}"), k(f"r:{event_id}")]
        group_args += [event_id, str(product), "1", f"buyer-{i}", ""]
        if len(group_args) == 5 * a.group or i == a.events - 1:
            keys = [k("pending"), k("seq"), k("inflight"), k("holds"), k("limits"), k("bought")] + group_keys
            pipe.evalsha(sha["reserve_group"], len(keys), *keys, *group_args)
            group_keys, group_args = [], []
        if i % 1000 == 999 or i == a.events - 1:
            for reply in pipe.execute():
                assert all(code == 1 for code in reply[::6]), reply  # six values an answer
    for i in range(0 if a.group else a.events):
        product, event_id = i % a.products + 1, f"order-{i}"
        if a.old_layout:
            pipe.evalsha(sha["reserve"], 4, k(f"stock:{product}"), k("pending"), k("seq"), k("inflight"),
                         event_id, str(product), "1")
        else:
            pipe.evalsha(sha["reserve"], 8, k(f"stock:{product}"), k("pending"), k("seq"), k("inflight"),
                         k(f"r:{event_id}"), k("holds"), k("limits"), k("bought"),
                         event_id, str(product), "1", f"buyer-{i}", "")
        if i % 1000 == 999 or i == a.events - 1:
            for reply in pipe.execute():
                assert reply[0] == 1, reply
    reserve = count() / a.events
    if a.reserve_only:
        print(json.dumps({"lua": a.source, "events": a.events, "group": a.group, "reserve_per_call": round(reserve)}))
        return

    zero()
    batches = []
    while True:
        if a.old_layout:
            reply = r.evalsha(sha["claim"], 4, k("pending"), k("processing"), k("claims"), k("seq"),
                              str(a.batch), "30000")
            entries = reply[2:]
        else:
            reply = r.evalsha(sha["claim"], 7, k("pending"), k("processing"), k("claims"), k("seq"),
                              k("cancels"), k("unsure"), k("releases"), str(a.batch), "30000")
            entries = reply[4:]
        if not entries:
            break
        batches.append(entries)
    claim = count() / a.events

    if a.order == "newest":
        batches.reverse()
    elif a.order == "alternate":
        batches = batches[1::2] + batches[0::2]
    zero()
    for entries in batches:
        keys = [k("processing"), k("claims"), k("attempts"), k("dead"), k("counters"), k("inflight"), k("unsure")]
        args = [str(len(entries)), "0", "0", f"applied={len(entries)}"]
        if not a.old_layout:
            keys += [k("outcomes"), k("cancels"), k("releases"), k("bought")]
            args += ["86400000", "1000000", "0"]
        for entry in entries:
            ev = json.loads(entry)
            if a.old_layout:
                args += [entry, str(ev["product_id"]), str(ev["qty"])]
            elif a.previous:
                keys.append(k(f"r:{ev['event_id']}"))
                args += [entry, str(ev["product_id"]), str(ev["qty"]), ev["event_id"], str(ev["product_id"]),
                         str(ev["qty"]), str(ev["seq"]), ev["buyer"], str(ev["at"]), "applied", ""]
            else:
                keys.append(k(f"r:{ev['event_id']}"))
                args += [entry, ev["event_id"], str(ev["product_id"]), str(ev["qty"]), str(ev["seq"]), ev["buyer"],
                         str(ev["at"])]
        reply = r.evalsha(sha["settle"], len(keys), *keys, *args)
        assert reply[0] == len(entries), reply
    settle = count() / a.events
    assert r.llen(k("processing")) == 0

    for key in r.scan_iter(match=f"{q}:*", count=1000):
        r.delete(key)
    print(json.dumps({"lua": a.source, "order": a.order, "events": a.events, "batch": a.batch, "group": a.group,
                      "reserve_per_call": round(reserve), "claim_per_entry": round(claim),
                      "settle_per_entry": round(settle)}))


if __name__ == "__main__":
    main()
