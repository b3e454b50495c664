"""The realistic camera sender's timing model: a common trigger, per-camera stamps, 4
encoder processes (the reordering the cell's sender showed), no sockets."""
import numpy as np
import pytest

from shm_vla.sim import camera as cam

PERIOD_NS = 200_000_000
TRIGGERS = 220                 # ~1,100 frames, as in the measurement of the real sender


def _sends(seed, n_cameras=5):
    model = cam.TriggeredSender(n_cameras, PERIOD_NS, seed)
    return [(trigger, *send) for trigger in range(TRIGGERS) for send in model.sends(trigger)]


def _longest_in_order(stamps):
    longest = run = 1
    for step in np.diff(stamps):
        run = run + 1 if step >= 0 else 1
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("seed", range(4))
def test_frames_arrive_reordered_like_the_real_sender(seed):
    sends = _sends(seed)
    stamps = np.array([capture for _, _, _, capture in sends])
    out_of_order = int((np.diff(stamps) < 0).sum())
    # the real sender: 383-420 of ~1,100 out of order, longest in-order run 8-14
    assert 330 <= out_of_order <= 440, out_of_order
    assert 6 <= _longest_in_order(stamps) <= 16
    send_times = np.array([send for _, send, _, _ in sends])
    assert (np.diff(send_times) >= 0).all()                    # one schedule, in time order
    delays_ms = np.array([send - capture for _, send, _, capture in sends]) / 1e6
    assert delays_ms.min() >= cam.ENCODE_MIN_MS and delays_ms.max() <= 2 * cam.ENCODE_MAX_MS
    assert 10 <= np.median(delays_ms) <= 40                    # tens of ms


def test_each_trigger_stamps_every_camera_once_within_a_few_ms():
    sends = _sends(0)
    for trigger in range(TRIGGERS):
        mine = [(camera, capture) for t, _, camera, capture in sends if t == trigger]
        assert sorted(camera for camera, _ in mine) == [0, 1, 2, 3, 4]
        captures_ms = np.array([capture for _, capture in mine]) / 1e6 - trigger * PERIOD_NS / 1e6
        assert 0 <= captures_ms.min() and captures_ms.max() - captures_ms.min() <= 5.0
    # a frame never arrives before the frames of an earlier trigger
    triggers = [t for t, _, _, _ in sends]
    assert triggers == sorted(triggers)


def test_the_schedule_is_the_same_for_a_seed_and_differs_between_seeds():
    assert _sends(3) == _sends(3) and _sends(3) != _sends(4)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError):
        cam.CameraSim("tcp://127.0.0.1:1", [("oak_d", 4)], profile="perfect")
