"""Choosing the frames of one trigger from the views' recent metadata (vl.view_policy =
"same_trigger"), without rings: the metadata is laid out as Ring.window writes it."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shm_vla.shm.ring import CAPTURE_UNKNOWN_NS
from shm_vla.workers.viewsets import TriggerSets

PERIOD_NS = 200_000_000
DEPTH = 15
T0 = 10**12


def _sets(arrivals):
    """arrivals[v]: capture times (ns, or None: unknown) of view v's frames in arrival order."""
    sets = TriggerSets(len(arrivals), DEPTH, PERIOD_NS // 2)
    for v, captures in enumerate(arrivals):
        captures = captures[-DEPTH:]
        k = len(captures)
        sets.count[v] = k
        row = sets.meta[v]
        row["record"][DEPTH - k:] = np.arange(k) + 100 * v
        row["capture_mono_ns"][DEPTH - k:] = [CAPTURE_UNKNOWN_NS if c is None else c for c in captures]
    return sets


def _trigger(t, view):
    return T0 + t * PERIOD_NS + 1_000_000 * view          # per-camera stamps a few ms apart


def _picked(sets, arrivals):
    """The capture times chosen (meta rows are the last DEPTH arrivals, right-aligned)."""
    held = [a[-DEPTH:] for a in arrivals]
    return [held[v][sets.chosen[v] - (DEPTH - len(held[v]))] for v in range(len(arrivals))]


def _chosen_triggers(sets, arrivals):
    return [round((c - T0) / PERIOD_NS) for c in _picked(sets, arrivals)]


def test_a_trigger_still_arriving_is_not_mixed_with_the_previous_one():
    arrivals = [[_trigger(t, v) for t in range(6 if v < 3 else 5)] for v in range(5)]
    sets = _sets(arrivals)
    assert sets.choose()
    assert sets.matched and _chosen_triggers(sets, arrivals) == [4] * 5
    assert sets.newer_partial and sets.lagging_view() in (3, 4)
    assert [sets.record(v) for v in range(5)] == [100 * v + 4 for v in range(5)]


def test_a_complete_trigger_has_no_newer_partial_one():
    arrivals = [[_trigger(t, v) for t in range(6)] for v in range(5)]
    sets = _sets(arrivals)
    assert sets.choose() and sets.matched and not sets.newer_partial
    assert _chosen_triggers(sets, arrivals) == [5] * 5


def test_a_frame_lost_in_one_view_falls_back_to_the_newest_trigger_all_hold():
    arrivals = [[_trigger(t, v) for t in range(6) if not (v == 2 and t == 5)] for v in range(5)]
    arrivals[2].append(None)                                   # and a frame with no capture time yet
    sets = _sets(arrivals)
    assert sets.choose() and sets.matched
    assert _chosen_triggers(sets, arrivals) == [4] * 5


def test_unsynchronised_cameras_get_the_nearest_frames_unmatched():
    arrivals = [[T0 + t * PERIOD_NS + v * PERIOD_NS // 5 for t in range(5)] for v in range(5)]
    sets = _sets(arrivals)
    assert sets.choose() and not sets.matched and not sets.newer_partial
    picked = _picked(sets, arrivals)
    assert max(picked) - min(picked) <= PERIOD_NS


def test_no_set_while_a_view_has_no_capture_time():
    arrivals = [[_trigger(t, v) for t in range(3)] for v in range(5)]
    arrivals[4] = [None, None]
    assert not _sets(arrivals).choose()
    arrivals[4] = []
    assert not _sets(arrivals).choose()


@settings(max_examples=200, deadline=None)
@given(triggers=st.integers(1, 30), lost=st.sets(st.tuples(st.integers(0, 4), st.integers(0, 29)), max_size=12),
       arrived=st.lists(st.integers(0, 5), min_size=5, max_size=5), seed=st.integers(0, 2**16))
def test_the_choice_is_the_newest_trigger_every_view_holds(triggers, lost, arrived, seed):
    """Views hold triggers 0..triggers-1 (the newest one only partly arrived, some frames
    lost), with per-camera jitter of up to 5 ms: the choice is one trigger, the newest
    trigger that every view holds within the last DEPTH frames."""
    rng = np.random.default_rng(seed)
    arrivals = []
    for v in range(5):
        last = triggers - 1 if arrived[v] < 3 else triggers      # the newest trigger: not every view has it
        held = [t for t in range(last + 1) if (v, t) not in lost]
        arrivals.append([T0 + t * PERIOD_NS + int(rng.integers(0, 5_000_000)) for t in held])
    window = [set(round((c - T0) / PERIOD_NS) for c in a[-DEPTH:]) for a in arrivals]
    common = set.intersection(*window)
    sets = _sets(arrivals)
    if not all(arrivals):
        assert not sets.choose()
        return
    assert sets.choose()
    if common:
        assert sets.matched and _chosen_triggers(sets, arrivals) == [max(common)] * 5
    else:
        assert not sets.matched
