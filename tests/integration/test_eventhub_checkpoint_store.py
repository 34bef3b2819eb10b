"""SqlCheckpointStore against the CheckpointStore contract, on SQLite and on the real PostgreSQL server."""

import threading
import time
from unittest import mock

import pytest
import sqlalchemy as sa
from azure.eventhub import CheckpointStore

from latigo.queues.checkpoint_store import SqlCheckpointStore
from latigo.storage.tables import EventHubOwnership

pytestmark = pytest.mark.integration
SCOPE = ("ns.servicebus.windows.net", "hub", "$Default")


def ownership(partition="0", owner="a", etag=None, **extra):
    claim = dict(zip(("fully_qualified_namespace", "eventhub_name", "consumer_group"), SCOPE, strict=True))
    claim.update(partition_id=partition, owner_id=owner, **extra)
    if etag:
        claim["etag"] = etag
    return claim


@pytest.fixture
def store(engine):
    return SqlCheckpointStore(engine)


def test_is_an_sdk_checkpoint_store(store):
    assert isinstance(store, CheckpointStore)


def test_first_claim_inserts_and_lists_with_an_etag(store):
    (won,) = store.claim_ownership([ownership("3", "a")], timeout=5)
    assert won["owner_id"] == "a" and won["partition_id"] == "3" and won["etag"]
    (listed,) = store.list_ownership(*SCOPE, timeout=5)
    assert listed == won
    assert store.list_ownership("other-ns", "hub", "$Default") == []


def test_concurrent_first_claims_from_threads_have_exactly_one_winner(store):
    barrier = threading.Barrier(8)
    results: dict[str, list] = {}

    def claim(owner):
        barrier.wait()
        results[owner] = list(store.claim_ownership([ownership("0", owner)]))

    threads = [threading.Thread(target=claim, args=(f"owner-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [owner for owner, won in results.items() if won]
    assert len(winners) == 1
    (row,) = store.list_ownership(*SCOPE)
    assert row["owner_id"] == winners[0]


def test_a_claim_with_a_stale_etag_loses_and_each_claim_gets_a_new_etag(store):
    (first,) = store.claim_ownership([ownership("0", "a")])
    (renewed,) = store.claim_ownership([ownership("0", "a", etag=first["etag"])])
    assert renewed["etag"] != first["etag"]
    assert renewed["last_modified_time"] >= first["last_modified_time"]
    assert store.claim_ownership([ownership("0", "b", etag=first["etag"])]) == []  # stale
    (stolen,) = store.claim_ownership([ownership("0", "b", etag=renewed["etag"])])
    assert stolen["owner_id"] == "b"
    assert store.claim_ownership([ownership("0", "a", etag=renewed["etag"])]) == []  # a lost it
    assert store.claim_ownership([ownership("0", "c")]) == []  # a first claim of a known partition loses


def test_claims_are_decided_one_by_one_in_a_batch(store):
    (zero,) = store.claim_ownership([ownership("0", "a")])
    won = store.claim_ownership([ownership("0", "b", etag="not-the-etag"), ownership("1", "b"),
                                 ownership("2", "b")])
    assert sorted(o["partition_id"] for o in won) == ["1", "2"]
    assert {o["partition_id"]: o["owner_id"] for o in store.list_ownership(*SCOPE)} == {"0": "a", "1": "b", "2": "b"}
    assert zero["owner_id"] == "a"


def test_expired_and_released_ownerships_are_claimable(store, engine):
    (claim,) = store.claim_ownership([ownership("0", "dead-owner")])
    with engine.begin() as connection:  # the owner stopped renewing a minute ago
        connection.execute(sa.update(EventHubOwnership).values(last_modified_time=claim["last_modified_time"] - 60))
    (listed,) = store.list_ownership(*SCOPE)
    expiry = 30
    assert listed["last_modified_time"] + expiry < time.time()  # what the SDK's balancer checks
    (taken,) = store.claim_ownership([{**listed, "owner_id": "b"}])
    assert taken["owner_id"] == "b" and taken["last_modified_time"] > listed["last_modified_time"]
    (released,) = store.claim_ownership([{**taken, "owner_id": ""}])  # how the SDK releases on shutdown
    assert released["owner_id"] == ""
    (again,) = store.claim_ownership([{**released, "owner_id": "c"}])
    assert again["owner_id"] == "c"


def test_last_modified_time_is_epoch_seconds_from_the_database_clock(store, engine):
    before = time.time()
    with mock.patch("time.time", return_value=0.0):  # the store must not use this process's clock
        (claim,) = store.claim_ownership([ownership("0", "a")])
    after = time.time()
    assert isinstance(claim["last_modified_time"], float)
    assert before - 2 <= claim["last_modified_time"] <= after + 2
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            db_now = connection.execute(sa.text("SELECT extract(epoch from now())::float")).scalar()
        assert abs(db_now - claim["last_modified_time"]) < 5


def test_checkpoints_round_trip_and_are_upserted(store):
    base = dict(zip(("fully_qualified_namespace", "eventhub_name", "consumer_group"), SCOPE, strict=True))
    store.update_checkpoint({**base, "partition_id": "0", "offset": "1024", "sequence_number": 7}, timeout=5)
    store.update_checkpoint({**base, "partition_id": "1", "offset": "0", "sequence_number": 0})
    store.update_checkpoint({**base, "partition_id": "0", "offset": "2048", "sequence_number": 9})
    listed = sorted(store.list_checkpoints(*SCOPE, timeout=5), key=lambda c: c["partition_id"])
    assert listed == [
        {**base, "partition_id": "0", "offset": "2048", "sequence_number": 9},
        {**base, "partition_id": "1", "offset": "0", "sequence_number": 0},
    ]
    assert isinstance(listed[0]["offset"], str)
    assert store.list_checkpoints("ns", "other-hub", "$Default") == []


def test_store_calls_are_fast(store):
    """A slow store makes the SDK's balancer churn ownership; one claim + list round is a few ms."""
    claims = store.claim_ownership([ownership(str(p), "a") for p in range(32)])
    started = time.perf_counter()
    for _ in range(20):
        claims = store.claim_ownership(store.list_ownership(*SCOPE))
    elapsed = (time.perf_counter() - started) / 20
    assert len(claims) == 32
    print(f"list + claim of 32 partitions: {elapsed * 1000:.1f} ms")
