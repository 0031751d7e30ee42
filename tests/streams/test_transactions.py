"""streams.transactions: what needs no broker (the transactions themselves: tests/e2e)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams.settings import WorkerSettings
from streams.transactions import (
    TransactionsUnavailable,
    by_partition,
    check_configuration,
    transactional_id,
)


def test_exactly_once_refuses_a_local_store_naming_both_settings():
    with pytest.raises(TransactionsUnavailable) as refused:
        check_configuration(
            WorkerSettings(processing_guarantee="exactly_once", worker_store="rocksdb://")
        )
    assert "SYNCTRAIL_PROCESSING_GUARANTEE=exactly_once" in str(refused.value)
    assert "SYNCTRAIL_WORKER_STORE=memory://" in str(refused.value)
    check_configuration(WorkerSettings(processing_guarantee="exactly_once"))
    check_configuration(WorkerSettings(worker_store="rocksdb://"))  # at_least_once: any store


def test_a_take_is_split_per_partition_keeping_each_partition_in_order():
    def event(partition: int, offset: int) -> SimpleNamespace:
        return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset))

    take = [event(1, 10), event(0, 5), event(1, 11), event(2, 7), event(0, 6)]
    groups = by_partition(take)
    assert [[(e.message.partition, e.message.offset) for e in g] for g in groups] == [
        [(1, 10), (1, 11)],
        [(0, 5), (0, 6)],
        [(2, 7)],
    ]


def test_each_input_partition_has_its_own_transactional_id_within_the_group():
    ids = {transactional_id("synctrail-worker", "synctrail.sync-events", p) for p in range(8)}
    assert len(ids) == 8
    assert transactional_id("g", "t", 3) == "g-t-3"
