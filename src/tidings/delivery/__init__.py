"""Delivery: the ledger (``models.Message``, the only table these modules write) from planned rows to
provider answers and statuses. One message visits the stages in this order, each once, every step one
set-based statement (docs/architecture.md):

* ``planning`` writes a campaign's recipients into the ledger: ``queued`` (or ``skipped``, ``control``);
* ``claims``: queued ──claim_batch──▶ sending (``claimed_by`` = the claim's token, ``lease_until``);
* ``send_rules``: ──mark_dispatched──▶ sending + ``dispatched_at``, committed just before the provider
  calls; or skipped (consent, DND drop, caps, tier) | queued (DND delay, pair rate, campaign halted);
* the ``dispatcher`` makes the provider call (paced by ``ratelimit``, over ``http``);
* ``outcomes``: ──record_attempts──▶ sent | queued (retry later) | failed | skipped;
* ``statuses``: the provider's status webhooks move it on to delivered, read (or failed).

And when a worker dies, ``reconciliation``: a claim never dispatched is requeued at once (no provider
call happened); a dispatched one waits for its status webhook (found by our ledger id, echoed by the
provider), then — once a later message of its sender got a status, proof that the webhook path works — is
requeued, or failed as ``outcome_unknown`` (``TIDINGS_UNKNOWN_OUTCOME=fail``, no proof needed).
"""
