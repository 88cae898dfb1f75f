"""Checks captured merpati deliveries with the official Standard Webhooks verifier (PyPI).

Usage: verify.py CASES.json. Every case must verify; the same case with its body changed
must not. Exits non-zero on the first failure.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

cases = json.load(open(sys.argv[1]))
for i, case in enumerate(cases):
    for secret in case["secrets"]:
        wh = Webhook(secret)
        wh.verify(case["body"], case["headers"], json_parse=False)
        try:
            wh.verify(case["body"] + " ", case["headers"], json_parse=False)
        except WebhookVerificationError:
            pass
        else:
            sys.exit(f"case {i}: a changed body verified")
print(f"python standardwebhooks: {len(cases)} deliveries verified")
