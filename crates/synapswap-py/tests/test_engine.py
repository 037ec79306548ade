"""synapswap.Engine from Python: sizes, blocks, DLPack views, schedule, statistics, errors."""

import time
import numpy as np
import pytest

import synapswap


def test_sizes_accept_ints_and_strings():
    assert synapswap.parse_size("512MiB") == 512 << 20
    assert synapswap.Engine("2MiB", backend="sim").vram_budget == 2 << 20
    assert synapswap.Engine(1 << 20, backend="sim").vram_budget == 1 << 20
    with pytest.raises(ValueError):
        synapswap.Engine("lots", backend="sim")
    with pytest.raises(TypeError):
        synapswap.Engine(1.5j, backend="sim")
    with pytest.raises(ValueError):
        synapswap.Engine("1MiB", backend="tpu")


def test_blocks_stream_through_a_small_pool_byte_exact():
    e = synapswap.Engine("1MiB", backend="sim")
    assert e.backend == "sim"
    blocks = []
    for i in range(6):
        b = e.alloc("256KiB", name=f"w{i}")
        e.write(b, bytes([i + 1]) * (256 << 10))
        e.declare(i, b)
        blocks.append(b)
    for _ in range(3):
        for i, b in enumerate(blocks):
            e.hint(i)
            with e.wait(b) as view:
                a = np.from_dlpack(view)
                assert a.shape == (256 << 10,) and a.dtype == np.uint8
                assert (a == i + 1).all()
                del a
    s = e.stats()
    for key in ("bytes_h2d", "hit_rate", "stall_s", "evictions", "peak_device_bytes", "vram_budget_bytes",
                "kept_blocks", "kept_bytes", "replans", "lookahead_s"):
        assert key in s
    assert s["evictions"] > 0 and s["peak_device_bytes"] <= 1 << 20
    assert e.read(blocks[2], size=4) == bytes([3]) * 4
    e.shutdown()


def test_each_use_is_one_wait_however_often_it_is_exported():
    e = synapswap.Engine("1MiB", backend="sim")
    blocks = [e.alloc("256KiB", name=f"w{i}") for i in range(6)]
    for i, b in enumerate(blocks):
        e.declare(i, b)
    uses = 0
    for _ in range(3):
        for i, b in enumerate(blocks):
            e.hint(i)
            with e.wait(b) as view:
                # Exports share the view's use: they are not waits of their own.
                a, c = np.from_dlpack(view), np.from_dlpack(view)
                del a, c
            uses += 1
    s = e.stats()
    assert s["waits"] == uses
    assert s["hits"] <= uses and s["hit_rate"] == s["hits"] / uses
    e.shutdown()


def test_read_checks_the_range_before_allocating():
    e = synapswap.Engine("64KiB", backend="sim")
    b = e.alloc(100)
    e.write(b, bytes(range(100)))
    for size, offset in [(1 << 62, 0), (1 << 40, 0), ((1 << 64) - 1, 1), (101, 0), (1, 100)]:
        with pytest.raises(ValueError, match="outside the block of 100 bytes"):
            e.read(b, size=size, offset=offset)
    assert e.read(b, size=0, offset=100) == b""
    assert e.read(b, size=3, offset=97) == bytes([97, 98, 99])
    assert e.read(b) == bytes(range(100))
    e.shutdown()


def test_exported_arrays_keep_their_block_resident():
    e = synapswap.Engine("256KiB", backend="sim")
    a, b = e.alloc("256KiB"), e.alloc("256KiB")
    view = e.wait(a)
    arr = np.from_dlpack(view)
    view.release()
    # The array still holds a: b cannot be placed until it is gone.
    assert e.residency(a) == "resident"
    del arr
    with e.wait(b):
        assert e.residency(a) == "host"


def test_blocks_cut_from_one_registered_buffer():
    e = synapswap.Engine("64KiB", backend="sim")
    host = np.arange(8192, dtype=np.uint32)
    buf = e.register_buffer(host.ctypes.data, host.nbytes)
    assert isinstance(buf, synapswap.HostBuffer) and buf.nbytes == host.nbytes
    a = e.alloc_in(buf, 0, 16384)
    # A range inside the buffer through alloc_external is cut from it too (no second
    # registration, which the sim refuses as CUDA does).
    b = e.alloc_external(host.ctypes.data + 16384, 16384)
    for block, first in ((a, 0), (b, 4096)):
        with e.wait(block) as v:
            assert (np.from_dlpack(v).view(np.uint32) == np.arange(first, first + 4096)).all()
    with pytest.raises(ValueError, match="outside the registered buffer"):
        e.alloc_in(buf, 30000, 4096)
    with pytest.raises(RuntimeError, match="already registered"):
        e.register_buffer(host.ctypes.data, 4096)
    e.free(a)
    e.free(b)
    e.shutdown()


def test_external_memory_is_used_in_place():
    e = synapswap.Engine("64KiB", backend="sim")
    host = np.arange(4096, dtype=np.uint32)
    b = e.alloc_external(host.ctypes.data, host.nbytes)
    with e.wait(b) as v:
        assert (np.from_dlpack(v).view(np.uint32) == np.arange(4096)).all()
    assert e.stats()["host_bytes"] == host.nbytes
    e.free(b)


def test_errors_are_python_exceptions():
    e = synapswap.Engine("64KiB", backend="sim")
    with pytest.raises(ValueError):
        e.alloc(0)
    with pytest.raises(MemoryError):
        e.alloc("1MiB")
    with pytest.raises(ValueError):
        e.alloc(10, priority=11)
    with pytest.raises(ValueError):
        e.alloc(10, policy="sometimes")
    b = e.alloc(100)
    with pytest.raises(ValueError):
        e.release(b)  # never acquired
    with pytest.raises(ValueError):
        e.declare(0, b, probability=0.0)
    e.free(b)
    with pytest.raises(ValueError):
        e.wait(b)  # freed
    e.shutdown()
    with pytest.raises(RuntimeError):
        e.alloc(10)


def test_write_takes_any_buffer():
    torch = pytest.importorskip("torch")
    e = synapswap.Engine("64KiB", backend="sim")
    b = e.alloc(16)
    want = bytes(range(16))
    for data in [
        want,
        bytearray(want),
        memoryview(want),
        np.arange(16, dtype=np.uint8),
        np.arange(16, dtype=np.uint8).reshape(4, 4).T.copy().T,  # Fortran order: C bytes
        torch.arange(16, dtype=torch.uint8),
        torch.arange(16, dtype=torch.uint8).reshape(4, 4).t().contiguous().t(),  # a strided view
    ]:
        e.write(b, bytes(16))
        e.write(b, data)
        assert e.read(b) == want, type(data)
    e.write(b, np.arange(4, dtype=np.int32), offset=0)
    assert e.read(b) == np.arange(4, dtype=np.int32).tobytes()
    with pytest.raises(TypeError, match="write needs bytes"):
        e.write(b, 12345)
    with pytest.raises(ValueError):
        e.write(b, bytes(17))
    e.shutdown()


def test_the_sim_link_is_paced_as_asked():
    # Default: 2 GB/s + 10 us a copy.
    e = synapswap.Engine("1MiB", backend="sim")
    assert e.sim_h2d_bytes_per_s == 2e9, e.backend_description
    assert "2.00 GB/s" in e.backend_description
    e = synapswap.Engine("1MiB", backend="sim", sim_h2d="25GB/s")
    assert e.sim_h2d_bytes_per_s == 25e9, e.backend_description
    assert synapswap.Engine("1MiB", backend="sim", sim_h2d=5e8).sim_h2d_bytes_per_s == 5e8
    e = synapswap.Engine("1MiB", backend="sim", sim_h2d="max")
    assert e.sim_h2d_bytes_per_s is None and "unpaced" in e.backend_description
    for bad in ("fast", "-1GB/s", 0, float("nan")):
        with pytest.raises(ValueError):
            synapswap.Engine("1MiB", backend="sim", sim_h2d=bad)
    with pytest.raises(TypeError):
        synapswap.Engine("1MiB", backend="sim", sim_h2d=[1])
    with pytest.raises(ValueError, match="sim"):
        synapswap.Engine("1MiB", backend="cuda", sim_h2d="max")


def test_trace_records_each_copy_once():
    e = synapswap.Engine("4MiB", backend="sim", trace=True)
    a, b = e.alloc("1MiB", name="a"), e.alloc("512KiB", name="b")
    e.declare(0, a)
    e.declare(1, b)
    t0 = e.now_s()
    for step, blk in ((0, a), (1, b)):
        e.hint(step)
        e.wait(blk).release()
    spans = e.take_trace()
    copies = [s for s in spans if s["track"] == "copy"]
    # Both loads' bytes, once (two loads that touch on both sides go as one copy: "load a +1
    # more").
    assert sum(s["bytes"] for s in copies) == (1 << 20) + (512 << 10), spans
    assert copies[0]["name"].startswith("load a"), spans
    for s in spans:
        assert s["cat"] in ("prefetch", "demand") and s["dur_s"] > 0, s
        assert t0 <= s["start_s"] <= e.now_s(), s
    # Paced at 2 GB/s: the copies together last at least their bytes over the rate (one span's
    # start is when the engine saw the previous one end, which can be later than the link did).
    first = min(s["start_s"] for s in copies)
    last = max(s["start_s"] + s["dur_s"] for s in copies)
    assert last - first >= ((1 << 20) + (512 << 10)) / 2e9, spans
    assert e.take_trace() == []  # taken: the next call starts afresh
    e.shutdown()
    # Off by default: nothing is recorded.
    e = synapswap.Engine("4MiB", backend="sim")
    x = e.alloc("1MiB")
    e.wait(x).release()
    assert e.take_trace() == []
    e.shutdown()


def test_a_choice_hint_loads_a_routed_candidate_ahead():
    e = synapswap.Engine("4MiB", backend="sim")
    dense = e.alloc("1MiB")
    experts = [e.alloc("1MiB") for _ in range(4)]
    e.declare(0, dense)
    for x in experts:
        e.declare(1, x, 0.25)
    e.hint(0)
    e.hint_choice(1, [(experts[2], 1.0)])
    # Only the hinted candidate loads ahead (beside step 0's own block).
    for _ in range(1000):
        if e.residency(experts[2]) == "resident":
            break
        time.sleep(0.001)
    assert e.residency(experts[2]) == "resident"
    assert [e.residency(x) for x in (experts[0], experts[1], experts[3])] == ["host"] * 3
    with pytest.raises(ValueError, match="not declared at step"):
        e.hint_choice(1, [(dense, 1.0)])
    with pytest.raises(ValueError, match="not declared"):
        e.hint_choice(9, [(experts[0], 1.0)])
    with pytest.raises(ValueError, match="probability"):
        e.hint_choice(1, [(experts[0], 0.0)])
    e.hint_choice(1, [])
