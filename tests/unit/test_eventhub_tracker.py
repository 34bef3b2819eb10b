"""The per-partition ack tracker: the checkpoint never passes an unfinished event, whatever the ack order."""

import threading

from hypothesis import given
from hypothesis import strategies as st

from latigo.queues.partition_tracker import PartitionTracker, Position


def tracked(count: int, first: int = 0) -> PartitionTracker:
    tracker = PartitionTracker("0")
    for seq in range(first, first + count):
        assert tracker.track(seq, str(seq * 100))
    return tracker


def test_out_of_order_acks_hold_the_checkpoint_below_the_first_unfinished_event():
    tracker = tracked(5)
    assert tracker.ack(3) is None
    assert tracker.ack(1) is None
    assert tracker.ack(0) == Position("100", 1)  # 0 and 1 done; 2 still running
    assert tracker.ack(4) is None
    assert tracker.checkpoint == Position("100", 1)
    assert tracker.ack(2) == Position("400", 4)
    assert tracker.pending == 0


@given(st.permutations(list(range(12))), st.integers(min_value=0, max_value=12))
def test_any_ack_order_checkpoints_exactly_the_acknowledged_prefix(order, how_many):
    tracker = tracked(12)
    done: set[int] = set()
    for seq in order[:how_many]:
        position = tracker.ack(seq)
        done.add(seq)
        prefix = 0
        while prefix in done:
            prefix += 1
        if position is not None:
            assert position.sequence_number == prefix - 1
        expected = None if prefix == 0 else Position(str((prefix - 1) * 100), prefix - 1)
        assert tracker.checkpoint == expected
        assert all(s in done for s in range(prefix))  # nothing unfinished below the checkpoint


def test_replayed_and_unknown_events_are_ignored():
    tracker = tracked(3, first=10)
    assert not tracker.track(11, "x")  # a replay of something already handed out
    assert tracker.ack(99) is None
    assert tracker.ack(10) == Position("1000", 10)
    assert tracker.ack(10) is None


def test_after_close_acks_no_longer_checkpoint():
    tracker = tracked(3)
    assert tracker.ack(0) == Position("0", 0)
    assert tracker.close() == 2
    assert tracker.ack(1) is None
    assert not tracker.track(5, "500")
    assert tracker.write(Position("100", 1), lambda p: None) is False


def test_checkpoint_writes_never_move_backwards():
    tracker = PartitionTracker("0", checkpoint=Position("50", 5))
    written = []
    assert not tracker.write(Position("40", 4), written.append)
    assert tracker.write(Position("70", 7), written.append)
    assert not tracker.write(Position("60", 6), written.append)  # an earlier ack's write arriving late
    assert written == [Position("70", 7)]


def test_concurrent_acks_from_many_threads_end_at_the_last_event():
    tracker = tracked(2000)
    written: list[int] = []
    lock = threading.Lock()

    def write(position):
        with lock:
            written.append(position.sequence_number)

    def worker(seqs):
        for seq in seqs:
            position = tracker.ack(seq)
            if position is not None:
                tracker.write(position, write)

    threads = [threading.Thread(target=worker, args=(range(i, 2000, 8),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.checkpoint == Position(str(1999 * 100), 1999)
    assert written == sorted(written) and written[-1] == 1999
    assert tracker.lag() == 0
