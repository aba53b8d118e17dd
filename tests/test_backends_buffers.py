"""Double-buffered staging: two preallocated slots used in turn, nothing allocated per frame; CUDA variant on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from avatarcam.backends import StagingBuffers, StagingSlot, TensorSpec, detect_hardware
from avatarcam.errors import EngineError

INPUTS = (TensorSpec(name="frame", shape=(2, 8, 8), dtype="float32"),)
OUTPUTS = (TensorSpec(name="doubled", shape=(2, 8, 8), dtype="float32"), TensorSpec(name="total", shape=(1,), dtype="float64"))


def double_on_host(slot: StagingSlot) -> None:
    np.multiply(slot.device_inputs["frame"], 2.0, out=slot.device_outputs["doubled"])
    slot.device_outputs["total"][0] = slot.device_inputs["frame"].sum(dtype=np.float64)


def frames(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"frame": rng.standard_normal((2, 8, 8)).astype(np.float32)} for _ in range(count)]


def test_cpu_double_buffer_alternates_two_preallocated_slots() -> None:
    staging = StagingBuffers(inputs=INPUTS, outputs=OUTPUTS, device="cpu")
    assert staging.allocations == 2 * (len(INPUTS) + len(OUTPUTS))
    allocations = staging.allocations
    input_ids = [id(slot.host_inputs["frame"]) for slot in staging.slots]
    seen_slots, seen_outputs = [], []
    for frame in frames(10):
        slot = staging.submit(frame, double_on_host)
        outputs = staging.collect(slot)
        np.testing.assert_array_equal(outputs["doubled"], frame["frame"] * 2)
        assert outputs["total"][0] == pytest.approx(float(frame["frame"].sum(dtype=np.float64)))
        seen_slots.append(slot.index)
        seen_outputs.append(id(outputs["doubled"]))
    assert seen_slots == [0, 1] * 5
    assert len(set(seen_outputs)) == 2 and seen_outputs[:2] * 5 == seen_outputs
    assert [id(slot.host_inputs["frame"]) for slot in staging.slots] == input_ids
    assert staging.allocations == allocations  # nothing allocated per frame


def test_previous_frame_survives_one_more_submit() -> None:
    staging = StagingBuffers(inputs=INPUTS, outputs=OUTPUTS)
    first, second = frames(2)
    kept = staging.collect(staging.submit(first, double_on_host))
    staging.collect(staging.submit(second, double_on_host))
    np.testing.assert_array_equal(kept["doubled"], first["frame"] * 2)  # the other slot was written


def test_dynamic_shapes_and_unknown_devices_are_refused() -> None:
    with pytest.raises(EngineError, match=r"tensor 'frame' has shape \(\*, 8, 8\) but staging buffers need every dim known"):
        StagingBuffers(inputs=(TensorSpec(name="frame", shape=(-1, 8, 8), dtype="float32"),), outputs=OUTPUTS)
    with pytest.raises(EngineError, match="staging device 'tpu' is not supported"):
        StagingBuffers(inputs=INPUTS, outputs=OUTPUTS, device="tpu")


def test_closed_buffers_refuse_work_and_close_twice() -> None:
    staging = StagingBuffers(inputs=INPUTS, outputs=OUTPUTS)
    staging.close()
    staging.close()
    with pytest.raises(EngineError, match="closed"):
        staging.submit(frames(1)[0], double_on_host)


@pytest.mark.gpu
@pytest.mark.skipif(not detect_hardware().torch_cuda, reason="no CUDA GPU (needs a CUDA build of torch)")
def test_cuda_staging_is_pinned_stream_ordered_and_allocation_free() -> None:
    import torch

    def double_on_device(slot: StagingSlot) -> None:
        # Runs inside the compute stream context that submit() sets up.
        torch.mul(slot.device_inputs["frame"], 2.0, out=slot.device_outputs["doubled"])
        slot.device_outputs["total"].copy_(slot.device_inputs["frame"].double().sum().reshape(1))

    staging = StagingBuffers(inputs=INPUTS, outputs=OUTPUTS, device="cuda")
    assert staging.slots[0].device_inputs["frame"].is_cuda
    assert staging._pinned[0]["inputs"]["frame"].is_pinned()  # noqa: SLF001 - the page-locking is the point
    allocations = staging.allocations
    data = frames(8)
    pending = staging.submit(data[0], double_on_device)
    for index in range(1, len(data)):
        # Submit frame N+1 before collecting frame N: its upload overlaps frame N's compute.
        following = staging.submit(data[index], double_on_device)
        np.testing.assert_allclose(staging.collect(pending)["doubled"], data[index - 1]["frame"] * 2)
        pending = following
    np.testing.assert_allclose(staging.collect(pending)["doubled"], data[-1]["frame"] * 2)
    assert staging.allocations == allocations
    staging.close()


def test_cpu_staging_reports_stage_times():
    from avatarcam.backends import StagingBuffers, TensorSpec

    staging = StagingBuffers(inputs=(TensorSpec(name="x", shape=(4, 4), dtype="float32"),),
                             outputs=(TensorSpec(name="y", shape=(4, 4), dtype="float32"),), device="cpu", name="t")

    def compute(slot):
        np.multiply(slot.host_inputs["x"], 2.0, out=slot.host_outputs["y"])

    slot = staging.submit({"x": np.ones((4, 4), np.float32)}, compute)
    assert staging.collect(slot)["y"][0, 0] == 2.0
    assert set(staging.last_timings_ms) == {"upload", "compute", "download"}
    assert all(v >= 0.0 for v in staging.last_timings_ms.values())
