#!/usr/bin/env python3
"""Bytes on disk per completed generation (rows only: no video files), for BENCHMARKS.md.

Starts a reelay binary (`--reelay PATH`) on a fresh SQLite file with the instant generator and
insecure callbacks allowed, creates N generations (a 120-character prompt, a callback URL),
waits until a local receiver has every webhook, stops reelay, checkpoints and vacuums the
database, and prints (size - size before the creates) / N.

    scripts/storage-per-generation.py --reelay target/release/reelay --count 10000
"""

import argparse
import concurrent.futures
import http.server
import json
import os
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request

PROMPT = ("A red fox running through fresh snow at dawn, low sun behind the pines, "
          "slow motion, shallow depth of field, 35 mm film")


def receiver():
    got = {"n": 0}
    lock = threading.Lock()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                got["n"] += 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


def size(db):
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("VACUUM")
    con.close()
    return os.path.getsize(db)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reelay", required=True)
    ap.add_argument("--count", type=int, default=10_000)
    args = ap.parse_args()
    hook, got = receiver()
    data = tempfile.mkdtemp(prefix="reelay-storage-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELAY_")}
    env.update(REELAY_DATA_DIR=data, REELAY_LISTEN="127.0.0.1:0", REELAY_GENERATOR="instant",
               REELAY_ALLOW_INSECURE_CALLBACKS="true", RUST_LOG="warn")
    key = json.loads(subprocess.check_output(
        [args.reelay, "keys", "create", "--credits", "1000000", "--json"], env=env))["api_key"]
    db = os.path.join(data, "reelay.sqlite3")
    empty = size(db)
    out = open(os.path.join(data, "stdout"), "w+")
    server = subprocess.Popen([args.reelay, "serve"], env=env, stdout=out,
                              stderr=subprocess.DEVNULL)
    url = None
    while url is None:
        time.sleep(0.1)
        out.seek(0)
        m = re.search(r"listening on (http://\S+)", out.read())
        url = m and m.group(1)
    callback = "http://127.0.0.1:%d/hook" % hook.server_address[1]
    body = json.dumps({"prompt": PROMPT, "callback_url": callback}).encode()

    def create(_):
        req = urllib.request.Request(url + "/v1/veo/generate", data=body, headers={
            "Authorization": "Bearer " + key, "Content-Type": "application/json"})
        urllib.request.urlopen(req).read()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(args.count)))
    while got["n"] < args.count:
        time.sleep(0.2)
    time.sleep(1)  # the last attempts' records
    server.send_signal(signal.SIGTERM)
    server.wait(30)
    total = size(db)
    per = (total - empty) / args.count
    print(json.dumps({"reelay": args.reelay, "count": args.count, "db_bytes": total,
                      "empty_db_bytes": empty, "bytes_per_generation": round(per, 1)}))
    hook.shutdown()


if __name__ == "__main__":
    main()
