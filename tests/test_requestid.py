"""Request ids: well formed, unique, and distinct between forked workers."""

from __future__ import annotations

import os
import re

from broker import requestid

ID = re.compile(r"[0-9a-f]{24}")


def test_a_fresh_id_is_96_random_bits_in_hex():
    assert ID.fullmatch(requestid.new_id())


def test_fresh_ids_do_not_repeat():
    ids = {requestid.new_id() for _ in range(100_000)}
    assert len(ids) == 100_000


def test_a_forked_worker_does_not_repeat_its_parents_ids():
    # gunicorn forks every worker from one master: ids drawn from a generator the fork copied
    # would repeat across workers unless each child reseeds.
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, requestid.new_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        from_child = pipe.read()
    assert ID.fullmatch(from_child)
    assert from_child != requestid.new_id()
