"""Chaos scenarios (issue 15 part 4, issue 19 part 4): real processes on loopback, one fault each.

Run them with ``make chaos`` or ``python -m tests.chaos [scenario ...]``; each prints
``CHAOS <scenario> <figure> <value>`` lines and the run exits non-zero when a figure breaks its
bound. ``python -m tests.chaos --list`` names them. The fast leader kill also runs in
``make test`` (``tests/chaos/test_kafka_failover.py``).

Apache Kafka (``tests.chaos.kafka``), bridge at 300 req/s for 20 s over 100 apps:

* ``kafka-leader-kill``: kill -9 of the node leading most sync-events partitions of the 3-node
  cluster (replication factor 3, ``min.insync.replicas=2``) 5 s in; bounds: 0 accepted
  deliveries lost, 0 duplicates on sync-events, the worker keeps deciding; the node,
  restarted, has its replicas back in sync (the time is a figure).
* ``kafka-controlled-shutdown``: SIGTERM of that node instead; bounds: also no 5xx from the
  bridge, and a spool (if any) drained within 10 s of Kafka answering again.
* ``kafka-stall``: one node frozen (SIGSTOP) for 10 s, then SIGCONT; idempotent producer
  (``kafka-stall-no-idempotence``: without, for comparison). Bound: 0 lost; duplicates and
  per-app order inversions are reported (issue 15 part 2 fixes what the worker makes of them).

* ``embedded-stall``: the same stall on the embedded broker, for comparison (bound: 0 lost).

The other embedded-broker scenarios of issue 15 (broker kill -9 and stall, bridge kill -9
mid-drain, worker kill -9 on a backlog, Slack connector kill -9, slow clients) go in modules
of their own beside ``kafka``, registered in ``tests.chaos.__main__.SCENARIOS``.
"""
