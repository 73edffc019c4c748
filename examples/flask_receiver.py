"""The seed's Flask webhook handler, with reelay's signature verification added.

Run from the repository root (README, "First ten minutes", step 5):

    python3 -m venv target/flask-venv && target/flask-venv/bin/pip install flask
    REELAY_WEBHOOK_SECRET=whsec_... target/flask-venv/bin/flask --app examples/flask_receiver run --port 3000

Then create generations with "callback_url": "http://127.0.0.1:3000/webhook" (reelay dev allows
plain http to loopback; in production the URL must be https), or run
`reelay listen --forward-to http://127.0.0.1:3000/webhook` and use the callback URL it prints.

A verified webhook is answered 200 and logged as
    INFO:root:Video ready for <generation_id>: <video_url>
or  ERROR:root:Generation failed for <generation_id>: <CODE>
A request whose signature does not verify is answered 401 (logged "POST /webhook ... 401").

The secret comes from `GET /v1/webhooks/secret` (or `reelay dev`'s greeting). During a rotation,
set REELAY_WEBHOOK_SECRET to "new,old" so either signature is accepted.
"""

import base64
import hashlib
import hmac
import logging
import os
import time

from flask import Flask, abort, jsonify, request

app = Flask(__name__)
logging.basicConfig(level=logging.INFO)

if not os.environ.get("REELAY_WEBHOOK_SECRET"):
    raise SystemExit("set REELAY_WEBHOOK_SECRET to the account's signing secret (whsec_...)")
SECRETS = [
    base64.b64decode(s.strip().removeprefix("whsec_"))
    for s in os.environ["REELAY_WEBHOOK_SECRET"].split(",")
]
TOLERANCE_SECONDS = 5 * 60
seen_ids = set()  # use your database in production: webhooks arrive at least once


def verified(req) -> bool:
    """Standard Webhooks: v1 = base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}"))."""
    msg_id = req.headers.get("webhook-id", "")
    timestamp = req.headers.get("webhook-timestamp", "")
    signatures = req.headers.get("webhook-signature", "").split()
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + req.get_data()
    for key in SECRETS:
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for signature in signatures:
            version, _, value = signature.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return True
    return False


@app.route("/webhook", methods=["POST"])
def runblob_webhook():
    if not verified(request):
        abort(401)
    webhook_id = request.headers["webhook-id"]
    if webhook_id in seen_ids:
        return jsonify({"status": "duplicate"}), 200
    seen_ids.add(webhook_id)

    data = request.get_json()
    generation_id = data.get("generation_id")
    if data.get("status") == "completed":
        logging.info(f"Video ready for {generation_id}: {data.get('video_url')}")
    else:
        error_code = (data.get("error") or {}).get("message", "Unknown error")
        logging.error(f"Generation failed for {generation_id}: {error_code}")
    return jsonify({"status": "received"}), 200
