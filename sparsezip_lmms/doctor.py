"""``python -m sparsezip_lmms doctor``: is this environment the tested one, and can it run an evaluation?

Prints one Markdown table to paste into a bug report: package versions against the lock
(``constraints/lock.txt``), the version bounds of this package, the torch build and its devices,
the attention implementations, whether lmms-eval's ``simple_evaluate`` can start, torchvision/torch
compatibility, decord, and whether every model id and ``*_eff`` task resolves through lmms-eval.

Status per row: ``ok``; ``warn`` (differs from what was tested, may still run); ``FAIL`` (a run
would break). The exit code is 1 when any row fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

OK, WARN, FAIL = "ok", "warn", "FAIL"
DISTRIBUTION = "sparsezip-lmms"
# Packages the lock leaves free on NVIDIA machines (the CUDA build of torch brings its own); the same
# pattern is in scripts/install.sh.
GPU_FREE = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")


@dataclass
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def has_nvidia_gpu() -> bool:
    """The same test as scripts/install.sh: an NVIDIA driver tool on the PATH."""
    return shutil.which("nvidia-smi") is not None


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the lock


@dataclass
class Lock:
    path: Path
    pins: dict[str, tuple[str, str]]  # canonical name -> (name as written, version)
    python: str | None  # the Python version the lock was made with (from its header)


def read_lock(path: Path) -> Lock:
    pins, python = {}, None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            found = re.search(r"with Python (\d+\.\d+(?:\.\d+)?)", line)
            python = found.group(1) if found else python
            continue
        if "==" in line:
            name, version = (part.strip() for part in line.split(";")[0].split("==", 1))
            pins[canonical(name)] = (name, version)
    return Lock(path, pins, python)


def _same_version(installed: str, pinned: str) -> bool:
    """``installed`` satisfies ``==pinned`` (a local label such as ``+cpu`` matches a plain pin)."""
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(f"=={pinned}").contains(installed, prereleases=True)


def check_python(lock: Lock) -> Check:
    here = platform.python_version()
    if lock.python is None:
        return Check("python", WARN, f"{here}; the lock does not say which Python it was made with")
    same = here.split(".")[:2] == lock.python.split(".")[:2]
    return Check("python", OK if same else WARN, f"{here} (lock made with {lock.python})")


def check_lock(lock: Lock, gpu: bool, version_of: Callable[[str], str | None] = installed_version) -> Check:
    matched, drift, missing, free, absent_on_purpose = 0, [], [], [], []
    for key, (name, pinned) in sorted(lock.pins.items()):
        if gpu and GPU_FREE.match(key):
            free.append(name)
            continue
        installed = version_of(name)
        if installed is None:
            if key == "torchvision" and not gpu:
                absent_on_purpose.append(name)  # the CPU install removes it: the registry build cannot load beside CPU torch
                continue
            missing.append(name)
        elif _same_version(installed, pinned):
            matched += 1
        else:
            drift.append(f"{name} {installed} (lock {pinned})")
    parts = [f"{matched} of {len(lock.pins) - len(free) - len(absent_on_purpose)} pinned packages match {lock.path.name}"]
    if absent_on_purpose:
        parts.append(
            f"{', '.join(absent_on_purpose)} left out on purpose (its registry build cannot load beside the CPU "
            "build of torch; transformers falls back to its PIL image processors, and `pip check` reports it)"
        )
    if drift:
        parts.append("DRIFT: " + ", ".join(drift))
    if missing:
        parts.append("not installed: " + ", ".join(missing))
    if free:
        parts.append(f"left free on this NVIDIA machine: {len(free)} (torch and its CUDA companions)")
    return Check("lock", WARN if drift or missing else OK, "; ".join(parts))


def check_requirements(version_of: Callable[[str], str | None] = installed_version) -> Check:
    """Every dependency of this package within the bounds pyproject.toml declares."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    requires = metadata.requires(DISTRIBUTION) or []
    env = default_environment()
    broken, checked = [], 0
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue  # an extra's requirement or one for another platform
        checked += 1
        installed = version_of(req.name)
        if installed is None:
            broken.append(f"{req.name} is not installed (needs {req.specifier or 'any version'})")
        elif not req.specifier.contains(installed, prereleases=True):
            broken.append(f"{req.name} {installed} is outside {req.name}{req.specifier}")
    if broken:
        return Check("requirements", FAIL, "; ".join(broken))
    return Check("requirements", OK, f"{checked} dependencies of {DISTRIBUTION} within their declared bounds")


# --------------------------------------------------------------------------- runtime


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - report, never raise
        return [Check("torch", FAIL, f"cannot import torch: {err!r}")]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    rows = [Check("torch", OK, f"{torch.__version__}, {build} build")]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        bf16 = torch.cuda.is_bf16_supported()
        rows.append(Check("devices", OK, f"{len(names)} CUDA: {', '.join(names)}; bfloat16 {'supported' if bf16 else 'NOT supported'}"))
    else:
        if torch.version.cuda and has_nvidia_gpu():
            rows.append(Check("devices", WARN, "CUDA build and an NVIDIA driver tool, but torch sees no CUDA device"))
        try:
            x = torch.ones(4, 4, dtype=torch.bfloat16)
            ok = bool((x @ x).float().eq(4).all())
        except Exception:  # noqa: BLE001
            ok = False
        rows.append(Check("devices", OK, f"CPU only ({torch.get_num_threads()} threads); bfloat16 matmul {'runs' if ok else 'FAILS'}"))
    return rows


def check_attention() -> Check:
    try:
        import torch
        from transformers.utils import is_flash_attn_2_available
    except Exception as err:  # noqa: BLE001
        return Check("attention", FAIL, f"cannot import transformers: {err!r}")
    sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    flash = is_flash_attn_2_available()
    detail = f"sdpa {'available' if sdpa else 'MISSING'}, eager available, flash_attention_2 {'available' if flash else 'not installed'}"
    return Check("attention", OK if sdpa else FAIL, detail)


def check_transformers() -> Check:
    try:
        import transformers
        from transformers.masking_utils import create_causal_mask

        from .llava.compat import cache_keyword
    except Exception as err:  # noqa: BLE001
        return Check("transformers", FAIL, f"cannot import: {err!r}")
    return Check("transformers", OK, f"{transformers.__version__}; KV-cache keyword `{cache_keyword(create_causal_mask)}`")


def check_simple_evaluate() -> list[Check]:
    """lmms-eval imports, and ``simple_evaluate``'s first step (its file-lock set-up) runs."""
    try:
        import lmms_eval
        from lmms_eval import evaluator
    except Exception as err:  # noqa: BLE001
        return [Check("lmms-eval", FAIL, f"cannot import lmms_eval.evaluator: {err!r}")]
    rows = [Check("lmms-eval", OK, f"{getattr(lmms_eval, '__version__', None) or installed_version('lmms-eval')}")]
    if not callable(getattr(evaluator, "simple_evaluate", None)):
        return rows + [Check("simple_evaluate", FAIL, "lmms_eval.evaluator has no simple_evaluate")]
    setup = getattr(evaluator, "_enable_reentrant_filelocks", None)
    if setup is None:
        return rows + [Check("simple_evaluate", OK, "importable (no file-lock set-up in this lmms-eval)")]
    try:
        setup()
    except Exception as err:  # noqa: BLE001
        filelock = installed_version("filelock")
        return rows + [Check("simple_evaluate", FAIL, f"every run would fail at its start: {err!r} (filelock {filelock})")]
    return rows + [Check("simple_evaluate", OK, "file-lock set-up runs (filelock " + str(installed_version("filelock")) + ")")]


def check_torchvision(gpu: bool) -> Check:
    version = installed_version("torchvision")
    if version is None:
        why = "expected on CPU: the install removes it" if not gpu else "transformers does not need it"
        return Check("torchvision", OK, f"not installed ({why})")
    try:
        import torch
        import torchvision  # noqa: F401

        torch.ops.torchvision.nms  # noqa: B018 - the operator a mismatched build lacks
        from transformers import CLIPImageProcessor  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return Check(
            "torchvision",
            FAIL,
            f"{version} does not load beside torch {installed_version('torch')}: {err!r}; transformers' image "
            "processors then fail to import (pip uninstall torchvision, or install the matching build)",
        )
    return Check("torchvision", OK, f"{version}, loads beside torch {installed_version('torch')}")


def check_decord() -> Check:
    try:
        import decord  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return Check("decord", FAIL, f"cannot import ({err!r}); lmms-eval's llava_hf adapters import it")
    return Check("decord", OK, str(installed_version("decord") or getattr(decord, "__version__", "?")))


def check_model_ids() -> Check:
    from .models.manifest import MODEL_CLASSES

    try:
        from lmms_eval.models import get_model
    except Exception as err:  # noqa: BLE001
        return Check("model ids", FAIL, f"cannot import lmms_eval.models: {err!r}")
    bad = []
    for model_id, path in MODEL_CLASSES.items():
        try:
            cls = get_model(model_id)
            if f"{cls.__module__}.{cls.__qualname__}" != path:
                bad.append(f"{model_id} -> {cls.__module__}.{cls.__qualname__} (expected {path})")
        except Exception as err:  # noqa: BLE001
            bad.append(f"{model_id}: {err!r}")
    if bad:
        return Check("model ids", FAIL, "; ".join(bad))
    return Check("model ids", OK, f"{len(MODEL_CLASSES)} resolve: {', '.join(MODEL_CLASSES)}")


def check_methods() -> Check:
    """The method registry: the built-in methods and installed plugins load (entry-point group
    ``sparsezip_lmms.methods``)."""
    from .methods import all_methods, broken_methods

    names = [spec.name for spec in all_methods()]
    broken = broken_methods()
    if broken or "none" not in names:
        problems = [f"{name}: {why}" for name, why in broken.items()] or ["the built-in methods are not registered (reinstall)"]
        return Check("methods", FAIL, "; ".join(problems))
    return Check("methods", OK, f"{len(names)} registered: {', '.join(names)}")


def shipped_task_names() -> list[str]:
    """Task and group names declared by the shipped task YAMLs."""
    import yaml

    from .paths import tasks_path

    names = []
    for path in sorted(tasks_path().glob("*.yaml")):
        # task YAMLs carry !function tags: read just the names, not the whole document
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"^(task|group):\s*\S", line):
                names.append(str(yaml.safe_load(line.split(":", 1)[1])))
    return names


def check_tasks() -> Check:
    try:
        from lmms_eval.tasks import TaskManager

        from .paths import tasks_path

        manager = TaskManager(include_path=str(tasks_path()))
        known = set(manager.all_tasks)
        expected = shipped_task_names()
    except Exception as err:  # noqa: BLE001
        return Check("tasks", FAIL, f"cannot index lmms-eval tasks: {err!r}")
    missing = [name for name in expected if name not in known]
    if missing:
        return Check("tasks", FAIL, f"do not resolve with --include_path {tasks_path()}: {', '.join(missing)}")
    return Check("tasks", OK, f"{', '.join(expected)} resolve")


# --------------------------------------------------------------------------- report


def run_checks(lock_file: Path | None = None) -> list[Check]:
    from .paths import lock_path

    gpu = has_nvidia_gpu()
    rows = [Check("sparsezip-lmms", OK, f"{installed_version(DISTRIBUTION)} on {platform.platform()} ({'NVIDIA' if gpu else 'no NVIDIA'} driver tool)")]
    try:
        lock = read_lock(Path(lock_file) if lock_file else lock_path())
    except (OSError, UnicodeDecodeError) as err:
        rows.append(Check("lock", WARN, f"cannot read the lock: {err}"))
    else:
        rows += [check_python(lock), check_lock(lock, gpu)]
    rows.append(check_requirements())
    rows += check_torch()
    rows += [check_transformers(), check_attention()]
    rows += check_simple_evaluate()
    rows += [check_torchvision(gpu), check_decord(), check_model_ids(), check_methods(), check_tasks()]
    return rows


def format_table(rows: list[Check]) -> str:
    lines = ["| check | status | detail |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.detail.replace('|', '/')} |" for r in rows]
    failed = sum(r.status == FAIL for r in rows)
    warned = sum(r.status == WARN for r in rows)
    verdict = "a run would break" if failed else ("runs, but differs from the tested environment" if warned else "the tested environment")
    return "\n".join(lines) + f"\n\ndoctor: {failed} failed, {warned} warnings: {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsezip_lmms doctor", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--lock", default=None, help="the lock file to compare with (default: the shipped constraints/lock.txt)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table (default: the table)")
    args = parser.parse_args(argv)
    rows = run_checks(args.lock)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows))
    return 1 if any(r.status == FAIL for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
