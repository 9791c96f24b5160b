"""`devices=`: finite differences split over devices (forced CPU devices) and processes (gloo).

The multi-device runs happen in subprocesses (`tests/_devices_worker.py`), since the
device count is fixed when a process first uses jax; each is bounded by a timeout and
killed on failure.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck._devices import map_over_devices, resolve_devices

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_devices_worker.py")
# All three worker processes run at once, so this bounds the file's subprocess time (a
# bound for a stuck run: about 20 s on 2 quiet cores, 45 s at a load average of 8).
WORKER_TIMEOUT_S = 90


def _env(n_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start(args: list[str], n_devices: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=_env(n_devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killed with all it started
    )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return -1, "", f"timed out (the workers' shared bound is {WORKER_TIMEOUT_S} s)"
    return proc.returncode, out, err


def _result(rc: int, out: str, err: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if rc != 0 or not lines:
        pytest.fail(f"worker failed (exit {rc}):\n{out[-2000:]}\n{err[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workers() -> dict[str, list[tuple[int, str, str]]]:
    """Runs the 4-device worker and the two gloo processes side by side (one time bound)."""
    port = _free_port()
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    procs = {
        "local": [_start(["local"], 4)],
        "multi": [_start(["multi", str(port), str(i)], 2) for i in range(2)],
    }
    try:
        return {
            name: [_finish(proc, max(0.1, deadline - time.monotonic())) for proc in group]
            for name, group in procs.items()
        }
    finally:
        for group in procs.values():
            for proc in group:
                _kill(proc)


@pytest.fixture(scope="module")
def local(workers) -> dict:
    """The worker's results on 4 forced CPU devices."""
    return _result(*workers["local"][0])


@pytest.fixture(scope="module")
def multi(workers) -> list[dict]:
    """The worker's results from 2 processes on localhost, 2 CPU devices each (gloo)."""
    for rc, out, _ in workers["multi"]:
        if rc == 3 and "UNAVAILABLE" in out:
            pytest.skip(out.split("UNAVAILABLE", 1)[1].strip().splitlines()[0])
    return [_result(*finished) for finished in workers["multi"]]


# -- 4 local devices ------------------------------------------------------------------


def test_worker_sees_four_devices(local):
    assert local["n_devices"] == 4


@pytest.mark.parametrize(
    "name, devices", [("correct", "3"), ("correct", "None"), ("broken", "None")]
)
def test_same_numeric_gradient_and_verdict_as_one_device(local, name, devices):
    one = local[f"full/{name}/1"]
    many = local[f"full/{name}/{devices}"]
    np.testing.assert_allclose(many["numeric"], one["numeric"], rtol=1e-12, atol=0)
    assert many["status"] == one["status"] == ("passed" if name == "correct" else "failed")
    assert many["failed"] == one["failed"]
    assert many["devices"] == {"3": 3, "None": 4}[devices]
    assert many["n_evaluations"] == one["n_evaluations"]  # padding is not counted
    assert (one["sharded_calls"], many["sharded_calls"]) == ([], [many["devices"]])


def test_broken_gradient_names_the_element_on_four_devices(local):
    assert local["full/broken/None"]["failed"] == [["args[0]['w']", [2, 3]]]


@pytest.mark.parametrize("name", ["correct", "broken"])
def test_probe_mode_same_verdict(local, name):
    one, many = local[f"probe/{name}/1"], local[f"probe/{name}/None"]
    assert (many["status"], many["failed"], many["devices"]) == (one["status"], one["failed"], 4)
    assert many["n_evaluations"] == one["n_evaluations"]
    assert (one["sharded_calls"], many["sharded_calls"]) == ([], [4])


@pytest.mark.parametrize("key", ["vjp/full/broken", "vjp/probe/broken", "jvp/full/correct"])
def test_jacobian_checks_same_report_on_four_devices(local, key):
    one, many = local[f"{key}/1"], local[f"{key}/None"]
    assert (one["devices"], many["devices"]) == (1, 4)
    assert one["status"] == ("failed" if key.endswith("broken") else "passed")
    assert many["report"] == one["report"]  # every line but the timing footer


def test_footer_counts_devices_only_when_several(local):
    assert re.fullmatch(
        r"  mode full, seed 0, \d+ evaluations, [0-9.]+ s", local["full/correct/1"]["footer"]
    )
    assert re.fullmatch(
        r"  mode full, seed 0, \d+ evaluations, 4 devices, [0-9.]+ s",
        local["full/correct/None"]["footer"],
    )


def _same_values(many, one, where: str = "") -> None:
    """Nested plain data equal, floats to rounding; `devices` counts may differ."""
    if isinstance(one, dict):
        assert sorted(many) == sorted(one), where
        for key in one:
            if key != "devices":
                _same_values(many[key], one[key], f"{where}.{key}")
    elif isinstance(one, list):
        assert len(many) == len(one), where
        for i, (a, b) in enumerate(zip(many, one)):
            _same_values(a, b, f"{where}[{i}]")
    elif isinstance(one, float):
        assert many == pytest.approx(one, rel=1e-9, abs=1e-12), where
    else:
        assert many == one, where


def test_rule_battery_same_verdict_and_values_on_four_devices(local):
    one, many = local["custom_vjp/broken/1"], local["custom_vjp/broken/None"]
    assert (one["devices"], many["devices"]) == (1, 4)
    assert many["status"] == one["status"] == "failed"
    assert many["checks"] == one["checks"]  # every check's verdict and finding
    assert one["fd"], "the fd check left no finite-difference result"
    _same_values(many["fd"], one["fd"])  # the finite differences themselves, to rounding
    assert re.fullmatch(r"  order 1, mode \w+, seed 0, [0-9.]+ s", one["footer"])
    assert re.fullmatch(r"  order 1, mode \w+, seed 0, 4 devices, [0-9.]+ s", many["footer"])


@pytest.mark.parametrize("key, entry", [("custom_vjp/broken", 3), ("custom_jvp/broken", 2)])
def test_broken_rules_named_on_four_devices(local, key, entry):
    result = local[f"{key}/None"]
    assert (result["status"], result["devices"]) == ("failed", 4)
    checks = {name: (status, message) for name, status, message in result["checks"]}
    assert checks["fd"][0] == "failed"
    assert f"args[0][{entry}] -> out[{entry}]" in checks["fd"][1]  # the rule's wrong element
    others = {status for name, (status, _) in checks.items() if name not in ("fd", "autodiff")}
    assert others <= {"passed", "skipped"}  # structure, linearity, vmap, jit: fine


def test_check_rules_on_four_devices(local):
    rules = local["rules/broken/None"]
    assert (rules["devices"], rules["to_dict_devices"], rules["status"]) == (4, 4, "failed")
    one = [name for name, s, _ in local["custom_vjp/broken/1"]["checks"] if s == "failed"]
    assert "fd" in one
    assert rules["failed"] == [["softplus", one]]  # as check_custom_vjp finds on 1 device
    assert re.search(r", 4 devices, [0-9.]+ s$", rules["footer"])


def test_explicit_device_list(local):
    assert local["explicit"]["devices"] == 2  # jax.devices()[2:]
    np.testing.assert_allclose(
        local["explicit"]["numeric"], local["full/correct/1"]["numeric"], rtol=1e-12, atol=0
    )


def test_one_other_device_runs_there(local):
    last = local["last"]  # devices=jax.devices()[3:], the arguments on device 0
    assert (last["devices"], last["sharded_calls"]) == (1, [1])
    np.testing.assert_allclose(last["numeric"], local["full/correct/1"]["numeric"], rtol=1e-12)
    assert re.fullmatch(r"  mode full, seed 0, \d+ evaluations, [0-9.]+ s", last["footer"])


@pytest.mark.parametrize("check", ["check_jvp", "check_vjp"])
def test_f_placing_its_own_computation_is_checked_with_notes(local, check):
    # Crashed before ("Received incompatible devices for jitted computation"): the finite
    # differences leave the devices, the analytic kernels run op by op; both say so.
    found = local["own_placement"][check]
    assert found["status"] == "passed", found
    notes = " | ".join(found["notes"])
    assert "f cannot be evaluated spread over the devices" in notes
    assert "cannot run inside jaxcheck's jitted kernels" in notes
    if check == "check_vjp":  # IndivisibleError when the batched VJP rows run: one at a time
        assert "Jacobian products computed one at a time" in notes


def test_sharded_map_pads_strips_and_traces_once(local):
    m = local["map"]
    assert m["traces"] == 1  # a second call with the same shapes reuses the program
    assert m["local_rows"] == [2, 2]  # 5 rows padded to 8, 2 per device
    np.testing.assert_array_equal(m["first"], 2.0 * np.arange(10.0).reshape(5, 2))
    np.testing.assert_array_equal(m["second"], 3.0 * (np.arange(10.0).reshape(5, 2) + 1))


def test_too_many_devices_message(local):
    assert local["too_many"] == (
        "`devices` must be between 1 and 4 (the cpu devices available), "
        "or None for all of them; got 5."
    )


# -- 2 processes x 2 devices ------------------------------------------------------------


def test_two_processes_share_global_devices(multi):
    assert [r["process_index"] for r in multi] == [0, 1]
    assert [(r["local_devices"], r["global_devices"]) for r in multi] == [(2, 4), (2, 4)]


@pytest.mark.parametrize("name", ["correct", "broken"])
def test_two_processes_identical_reports(multi, local, name):
    first, second = (r[name] for r in multi)
    assert first["report"] == second["report"]
    assert first["report"]["devices"] == 4
    assert first["summary"]["status"] == local[f"full/{name}/1"]["status"]
    assert first["summary"]["failed"] == local[f"full/{name}/1"]["failed"]
    np.testing.assert_allclose(
        first["summary"]["numeric"], local[f"full/{name}/1"]["numeric"], rtol=1e-12, atol=0
    )


def test_two_processes_probe_mode(multi):
    first, second = (r["probe"] for r in multi)
    assert first == second
    assert (first["status"], first["devices"]) == ("failed", 4)


def test_two_processes_sparse_jacobian(multi):
    first, second = (r["sparse"] for r in multi)
    assert first == second  # the same report on every process
    assert (first["status"], first["devices"]) == ("failed", 4)
    assert first["sparsity"].startswith("sparse: ")  # the colour chunks split over processes
    assert first["blocks"][0]["worst"]["input_index"] == [4]  # bad_sin's wrong entry


def test_two_processes_uneven_devices_message(multi):
    assert multi[0]["uneven"] == (
        "`devices=3` cannot be split evenly over the 2 processes of this multi-process run: "
        "pass a multiple of 2, or None for all 4 global devices."
    )


# -- in this process (one device) ---------------------------------------------------------


def test_one_device_default():
    result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.sin(x)), (jnp.arange(3.0),), mode="full")
    assert result.devices == len(jax.devices()) == 1
    assert result.to_dict()["devices"] == 1
    assert "devices" not in str(result).splitlines()[-1]


def test_resolve_devices_forms():
    all_devices = tuple(jax.devices())
    assert resolve_devices(None, (jnp.zeros(2),)) == all_devices
    assert resolve_devices(1) == all_devices[:1]
    assert resolve_devices(np.int64(1)) == all_devices[:1]
    assert resolve_devices(all_devices[0]) == all_devices[:1]
    assert resolve_devices(list(all_devices)) == all_devices


@pytest.mark.parametrize(
    "devices, error, message",
    [
        (0, ValueError, "`devices` must be between 1 and 1 (the cpu devices available)"),
        (2, ValueError, "`devices` must be between 1 and 1"),
        (True, TypeError, "`devices` must be None (all devices), an int (how many)"),
        (2.0, TypeError, "got float"),
        ("cpu", TypeError, "got str"),
        ([], ValueError, "`devices` is empty"),
        (["cpu:0"], TypeError, "`devices` must hold `jax.Device` objects"),
        ("dup", ValueError, "`devices` lists a device twice"),
    ],
    ids=str,
)
def test_bad_devices_messages(devices, error, message):
    if devices == "dup":
        devices = [jax.devices()[0]] * 2
    with pytest.raises(error, match=re.escape(message)):
        jaxcheck.check_grad(lambda x: jnp.sum(x**2), (jnp.arange(3.0),), devices=devices)


def test_one_device_map_is_a_plain_cached_call():
    traces = []

    def kernel(replicated, rows):
        traces.append(rows["a"].shape)
        return {"y": rows["a"] + replicated, "z": rows["b"].sum(axis=1)}

    devices = resolve_devices(None)
    batched = {"a": np.arange(5.0), "b": np.ones((5, 3), np.float32)}
    first = map_over_devices(kernel, np.float32(1.0), batched, devices, row_multiple=4)
    second = map_over_devices(kernel, np.float32(2.0), batched, devices, row_multiple=4)
    assert traces == [(8,)]  # padded to a multiple of 4, traced once
    assert isinstance(first["y"], np.ndarray) and first["y"].shape == (5,)
    np.testing.assert_array_equal(second["y"], np.arange(5.0) + 2)
    np.testing.assert_array_equal(first["z"], np.full(5, 3.0))


def test_map_rejects_ragged_rows():
    with pytest.raises(ValueError, match="one common leading axis"):
        map_over_devices(lambda r, b: b, 0.0, (np.zeros(3), np.zeros(4)), resolve_devices(None))


def _sin_rule() -> jax.custom_vjp:
    f = jax.custom_vjp(jnp.sin)
    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    return f


@pytest.mark.parametrize("entry", ["check_custom_vjp", "check_rules"])
def test_rule_checks_record_devices(entry):
    x = (jnp.linspace(-1.0, 1.0, 3),)
    if entry == "check_custom_vjp":
        result = jaxcheck.check_custom_vjp(_sin_rule(), x)
    else:
        result = jaxcheck.check_rules(lambda x: jnp.sum(_sin_rule()(x)), x)
    assert result.passed and result.devices == 1
    assert result.to_dict()["devices"] == 1
    assert "devices" not in str(result).splitlines()[-1]


@pytest.mark.parametrize("entry", ["check_custom_vjp", "check_custom_jvp", "check_rules"])
def test_rule_checks_bad_devices_message(entry):
    x = (jnp.linspace(-1.0, 1.0, 3),)
    if entry == "check_custom_jvp":
        f = jax.custom_jvp(jnp.sin)
        f.defjvp(lambda p, t: (jnp.sin(p[0]), jnp.cos(p[0]) * t[0]))
        call = lambda: jaxcheck.check_custom_jvp(f, x, devices=2)  # noqa: E731
    elif entry == "check_custom_vjp":
        call = lambda: jaxcheck.check_custom_vjp(_sin_rule(), x, devices=2)  # noqa: E731
    else:
        call = lambda: jaxcheck.check_rules(lambda v: jnp.sum(_sin_rule()(v)), x, devices=2)  # noqa: E731
    with pytest.raises(ValueError, match=re.escape("`devices` must be between 1 and 1")):
        call()


class _Double(NamedTuple):
    scale: float

    def __call__(self, replicated, rows):
        return rows * 2 * self.scale


class _Square(NamedTuple):
    scale: float

    def __call__(self, replicated, rows):
        return rows**2 * self.scale


def test_kernels_of_equal_fields_keep_their_own_programs():
    # NamedTuples of different classes with equal fields compare equal: the program caches
    # must still tell them apart.
    assert _Double(1.0) == _Square(1.0)
    rows = np.arange(3.0, dtype=np.float32)
    devices = resolve_devices(None)
    np.testing.assert_array_equal(map_over_devices(_Double(1.0), 0.0, rows, devices), 2 * rows)
    np.testing.assert_array_equal(map_over_devices(_Square(1.0), 0.0, rows, devices), rows**2)
