"""The wheel ships the task YAMLs, model configs and the lock inside the package, where the code finds them."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile



def test_wheel_contains_tasks_configs_and_entry_point(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    # built from a copy: setuptools writes <name>.egg-info into the tree it builds, and one left in the
    # repository would shadow the installed metadata (entry points included) for commands run from there
    source = tmp_path / "src"
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "build", "__pycache__", "tests"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sparsezip_lmms-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        zf.extractall(tmp_path / "site")
    for task in ("pope_eff", "mme_eff", "docvqa_val_eff", "sparsezip_eff"):
        assert f"sparsezip_lmms/tasks/{task}.yaml" in names
    for config in ("sparsezip_64", "visionzip_64", "sparsevlm_64", "keep_all", "ablations/merge_off"):
        assert f"sparsezip_lmms/model_configs/{config}.yaml" in names
    assert "sparsezip_lmms/constraints/lock.txt" in names  # doctor compares with it
    assert "[lmms_eval.models]" in entry_points and "sparsezip_lmms.models.manifest:manifests" in entry_points
    assert "[sparsezip_lmms.methods]" in entry_points and "sparsezip_lmms.methods.builtin:SPARSEZIP" in entry_points
    # every subpackage of the source tree ships
    packages = {p.parent.relative_to(repo).as_posix() for p in (repo / "sparsezip_lmms").rglob("__init__.py")}
    assert packages and {p for p in packages if f"{p}/__init__.py" not in names} == set()

    # In an installed wheel the locator finds the folders inside the package.
    spec = importlib.util.spec_from_file_location("_installed_paths", tmp_path / "site/sparsezip_lmms/paths.py")
    paths = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paths)
    assert paths.tasks_path() == tmp_path / "site/sparsezip_lmms/tasks"
    assert paths.model_configs_path() == tmp_path / "site/sparsezip_lmms/model_configs"
    assert paths.lock_path() == tmp_path / "site/sparsezip_lmms/constraints/lock.txt"


def test_shipped_tasks_mirror_upstream(tmp_path):
    """Our *_eff tasks keep upstream's prompts, generation settings, splits and metrics."""
    import lmms_eval
    from lmms_eval.utils import load_yaml_config

    from sparsezip_lmms.paths import tasks_path

    upstream_root = __import__("pathlib").Path(lmms_eval.__file__).parent / "tasks"
    pairs = {"pope_eff": "pope/pope.yaml", "mme_eff": "mme/mme.yaml", "docvqa_val_eff": "docvqa/docvqa_val.yaml"}
    for ours, theirs in pairs.items():
        mine = load_yaml_config(str(tasks_path() / f"{ours}.yaml"))
        upstream = load_yaml_config(str(upstream_root / theirs))
        for key in ("dataset_path", "test_split", "output_type", "doc_to_target", "generation_kwargs"):
            assert mine.get(key) == upstream.get(key), (ours, key)
        assert mine.get("dataset_name") == upstream.get("dataset_name")
        assert mine["lmms_eval_specific_kwargs"]["default"] == upstream["lmms_eval_specific_kwargs"]["default"]
        for fn in ("doc_to_visual", "doc_to_text"):
            assert mine[fn].__qualname__ == upstream[fn].__qualname__, (ours, fn)
        upstream_metrics = {m["metric"] for m in upstream["metric_list"]}
        assert upstream_metrics <= {m["metric"] for m in mine["metric_list"]}, ours
