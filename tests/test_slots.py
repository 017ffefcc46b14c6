"""GPU slot names and modes (stillmotion/slots.py) without a server; tests/test_server.py runs them on one."""

import json
import socket

import pytest

from stillmotion import slots


def test_a_slot_names_the_machine_and_the_physical_device(monkeypatch):
    host = socket.gethostname()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slots.slot_name("cpu") == f"stillmotion-gpu:{host}:cpu"
    assert slots.slot_name("cuda:1") == f"stillmotion-gpu:{host}:cuda:1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # this process's cuda:1 is the machine's GPU 3
    assert slots.slot_name("cuda:1") == f"stillmotion-gpu:{host}:cuda:3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f0c")
    assert slots.slot_name("cuda:0", host="a/b") == "stillmotion-gpu:a-b:cuda:GPU-5f0c"


def test_auto_asks_no_server_without_a_real_one_and_on_needs_the_limit(monkeypatch):
    asked = []
    monkeypatch.setattr(slots, "limit_exists", lambda name: asked.append(name) or False)
    monkeypatch.setattr(slots, "_real_server", lambda: False)
    monkeypatch.delenv(slots.SLOTS_ENV, raising=False)
    assert slots.slot_for("cpu") is None and asked == []  # the embedded server: no lookup at all
    monkeypatch.setenv(slots.SLOTS_ENV, "off")
    slots.check_slot("cpu")
    assert slots.slot_for("cpu") is None and asked == []
    monkeypatch.setenv(slots.SLOTS_ENV, "on")
    assert slots.slot_for("cpu") == slots.slot_name("cpu")
    with pytest.raises(slots.GpuSlotMissing, match="run `stillmotion gpu-slots`"):
        slots.check_slot("cpu")
    monkeypatch.setenv(slots.SLOTS_ENV, "sometimes")
    with pytest.raises(slots.GpuSlotMissing, match="must be one of auto, on, off"):
        slots.slot_mode()


def test_auto_on_a_real_server_uses_a_limit_that_exists_looked_up_once(monkeypatch):
    asked = []
    monkeypatch.setattr(slots, "limit_exists", lambda name: asked.append(name) or name.endswith(":cpu"))
    monkeypatch.setattr(slots, "_real_server", lambda: True)
    monkeypatch.setattr(slots, "_SEEN", {})
    monkeypatch.delenv(slots.SLOTS_ENV, raising=False)
    assert slots.slot_for("cpu") == slots.slot_for("cpu") == slots.slot_name("cpu")
    assert slots.slot_for("mps") is None and slots.slot_for("mps") is None
    assert len(asked) == 2  # once per device, then remembered


def test_each_hold_is_logged_with_its_slot(monkeypatch, tmp_path):
    log = tmp_path / "holds.jsonl"
    monkeypatch.setenv(slots.SLOT_LOG_ENV, str(log))
    monkeypatch.setenv(slots.SLOTS_ENV, "off")
    with slots.hold_slot("cpu"):
        pass
    (hold,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert hold["slot"] is None and hold["device"] == "cpu" and hold["enter"] <= hold["exit"]
