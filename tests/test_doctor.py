"""``python -m sparsezip_lmms doctor``: clean in the tested environment, loud about drift and traps.

The broken environments are simulated without installing anything: a folder put first on
PYTHONPATH shadows a distribution's metadata (``importlib.metadata`` takes the first one found) and,
for filelock, the package itself, laid out the way filelock 4.3 lays it out (no ``filelock._api``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsezip_lmms.doctor import FAIL, GPU_FREE, OK, WARN, Lock, check_lock, read_lock
from sparsezip_lmms.paths import lock_path

REPO = Path(__file__).resolve().parents[1]


def _doctor(shadow: Path | None = None) -> tuple[int, dict[str, dict]]:
    env = dict(os.environ)
    if shadow is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", "sparsezip_lmms", "doctor", "--json"], capture_output=True, text=True, env=env, timeout=600
    )
    rows = json.loads(proc.stdout)
    return proc.returncode, {row["name"]: row for row in rows}


def _fake_metadata(root: Path, name: str, version: str) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_doctor_is_clean_in_the_locked_environment():
    code, rows = _doctor()
    assert code == 0, rows
    assert not [r for r in rows.values() if r["status"] == FAIL]
    assert rows["lock"]["status"] == OK and "DRIFT" not in rows["lock"]["detail"], rows["lock"]
    assert rows["simple_evaluate"]["status"] == OK
    from sparsezip_lmms.models.manifest import MODEL_CLASSES

    assert f"{len(MODEL_CLASSES)} resolve" in rows["model ids"]["detail"]
    for task in ("pope_eff", "mme_eff", "docvqa_val_eff", "sparsezip_eff"):
        assert task in rows["tasks"]["detail"]


def test_doctor_prints_a_table_to_paste():
    from sparsezip_lmms.doctor import Check, format_table

    table = format_table([Check("torch", OK, "2.13.0, CPU build"), Check("decord", FAIL, "cannot import | x")])
    assert table.splitlines()[:2] == ["| check | status | detail |", "|---|---|---|"]
    assert "| decord | FAIL | cannot import / x |" in table
    assert table.endswith("doctor: 1 failed, 0 warnings: a run would break")


def test_doctor_flags_a_filelock_without_its_api_module(tmp_path):
    """filelock 4.3 moved ``filelock._api``: lmms-eval 0.7.3's simple_evaluate then dies at its start."""
    import filelock

    real = Path(filelock.__file__).parent
    fake = tmp_path / "filelock"
    shutil.copytree(real, fake, ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "_api.py").rename(fake / "_base.py")
    for path in fake.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\b_api\b", "_base", text))
    _fake_metadata(tmp_path, "filelock", "4.3.1")

    code, rows = _doctor(tmp_path)
    assert code == 1
    assert "filelock 4.3.1 (lock " in rows["lock"]["detail"] and rows["lock"]["status"] == WARN
    assert rows["requirements"]["status"] == FAIL
    assert "filelock 4.3.1 is outside filelock" in rows["requirements"]["detail"]
    assert rows["simple_evaluate"]["status"] == FAIL
    assert "filelock._api" in rows["simple_evaluate"]["detail"]


def test_doctor_flags_a_transformers_outside_the_supported_range(tmp_path):
    _fake_metadata(tmp_path, "transformers", "4.57.1")
    code, rows = _doctor(tmp_path)
    assert code == 1
    assert "transformers 4.57.1 (lock " in rows["lock"]["detail"]
    assert "transformers 4.57.1 is outside transformers" in rows["requirements"]["detail"]


def test_lock_drift_and_the_packages_left_free_on_gpus(tmp_path):
    lock_file = tmp_path / "lock.txt"
    lock_file.write_text(
        "# made with Python 3.11.7\nfilelock==4.2.12\ntorch==2.13.0\nnvidia-cublas==13.1.0\ntorchvision==0.28.0\nrich==14.0.0\n"
    )
    lock = read_lock(lock_file)
    assert lock.python == "3.11.7" and set(lock.pins) == {"filelock", "torch", "nvidia-cublas", "torchvision", "rich"}
    installed = {"filelock": "4.3.1", "torch": "2.13.0+cpu", "rich": "14.0.0", "nvidia-cublas": "12.0"}.get

    cpu = check_lock(lock, gpu=False, version_of=installed)
    assert cpu.status == WARN
    assert "DRIFT: filelock 4.3.1 (lock 4.2.12), nvidia-cublas 12.0 (lock 13.1.0)" in cpu.detail
    assert "torch" not in cpu.detail.split("DRIFT")[1]  # 2.13.0+cpu is the pinned 2.13.0
    assert "not installed" not in cpu.detail  # torchvision's absence is expected on CPU

    gpu = check_lock(lock, gpu=True, version_of=installed)
    assert "DRIFT: filelock 4.3.1 (lock 4.2.12)" in gpu.detail and "nvidia" not in gpu.detail.split(";")[1]
    assert "left free on this NVIDIA machine: 3" in gpu.detail

    clean = check_lock(Lock(lock_file, {"rich": ("rich", "14.0.0")}, None), gpu=False, version_of=installed)
    assert clean.status == OK and "1 of 1" in clean.detail


def test_the_shipped_lock_pins_the_known_traps_away():
    lock = read_lock(lock_path())
    from packaging.version import Version

    assert Version(lock.pins["filelock"][1]) < Version("4.3")
    assert lock.pins["torch"][1] == "2.13.0"  # the CPU wheel; no local label in the pin
    assert "lmms-eval" in lock.pins and "transformers" in lock.pins
    assert "sparsezip-lmms" not in lock.pins


def test_install_script_and_doctor_leave_the_same_packages_free_on_gpus():
    script = (REPO / "scripts" / "install.sh").read_text()
    assert f"'{GPU_FREE.pattern}'" in script


@pytest.mark.parametrize("name", ["torch", "torchvision", "torchaudio", "triton", "nvidia-cudnn-cu13", "cuda-bindings"])
def test_gpu_free_pattern(name):
    assert GPU_FREE.match(name)
    assert not GPU_FREE.match("transformers") and not GPU_FREE.match("torchmetrics")
