"""ModelSlots: a slot given back while a call waits is free for others, taken again only when the call
needs it, and never released twice."""

from __future__ import annotations

import threading

from latigo.model_slots import ModelSlots, give_back_slot, take_slot_again


def test_a_slot_given_back_is_free_for_another_thread_and_taken_again_after_it() -> None:
    slots = ModelSlots(1)
    order: list[str] = []
    other_has_it, retaken = threading.Event(), threading.Event()

    def other() -> None:
        with slots.slot():
            order.append("other runs")
            other_has_it.set()
            assert not retaken.wait(0.3), "the slot was taken again while the other thread held it"
        order.append("other done")

    with slots.slot():
        give_back_slot()
        thread = threading.Thread(target=other)
        thread.start()
        assert other_has_it.wait(5)
        take_slot_again()
        retaken.set()
        order.append("taken again")
    thread.join(5)
    assert order == ["other runs", "other done", "taken again"]
    with slots.slot():
        pass  # free again


def test_a_slot_given_back_and_not_taken_again_is_not_released_twice() -> None:
    slots = ModelSlots(2)
    with slots.slot():
        give_back_slot()
    with slots.slot(), slots.slot():  # both free; a second release would have raised ValueError
        take_slot_again()  # nothing given back in this block: a no-op
    give_back_slot()  # outside a slot: a no-op
    take_slot_again()
