"""What "copy a script into your project" means, checked: an experiment script and exactly the files the
README lists under "Files to take along", copied into an empty folder, run there with --smoke; and the
losses file runs on its own, as a student reading it would run it."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = Path(__file__).resolve().parent / "offline"


def files_to_take_along() -> list[str]:
    line = next(l for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("Files to take along:"))
    return re.findall(r"`([^`]+)`", line)


def test_a_copied_script_runs_with_only_the_files_the_readme_names(tmp_path):
    project = tmp_path / "my-project"
    project.mkdir()
    shutil.copy(ROOT / "exp_rq1_objectives.py", project)
    names = files_to_take_along()
    assert "common.py" in names and "data/" in names
    for name in names:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, project / name.rstrip("/"))
    # Only the copy on the path (and the network blocked): the repository must not be importable.
    env = {**os.environ, "PYTHONPATH": str(OFFLINE)}
    result = subprocess.run([sys.executable, "exp_rq1_objectives.py", "--smoke", "--objectives", "bce", "infonce",
                             "--collections", "vaswani", "--results", "results"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| infonce" in result.stdout
    written = project / "results" / "tables" / "rq1_smoke_tiny-bert__objectives-bce-infonce_collections-vaswani"
    assert (written / "rq1_nDCG10.tex").exists()
    # Every kit module the script loaded came from the copy.
    probe = subprocess.run([sys.executable, "-c", "import exp_rq1_objectives, grid, tables, cross_encoder; "
                            "import common, paper_setup, losses, sys; "
                            "print('\\n'.join(sys.modules[m].__file__ for m in "
                            "['exp_rq1_objectives', 'grid', 'tables', 'cross_encoder', 'common', 'paper_setup', "
                            "'losses']))"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert all(Path(f).resolve().parent == project.resolve() for f in probe.stdout.split()), probe.stdout
    # A flag whose optional file was not copied: one line naming the file to add, before any work.
    missing = subprocess.run([sys.executable, "exp_rq1_objectives.py", "--demo", "--from-shipped", "--precision",
                              "bf16", "--objectives", "bce", "infonce", "--collections", "scifact", "--results",
                              "results"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1] == (
        "error: --from-shipped needs extras/shipped.py (and extras/__init__.py): copy them from the kit beside this "
        "script"), missing.stderr[-2000:]


def test_no_script_loads_an_optional_feature_it_was_not_asked_for():
    """Importing a script (its flags unparsed, nothing run) loads no optional feature (extras/, where shipped,
    released and reproduction, once imported by every script, now live): a core run never does."""
    scripts = sorted(p.stem for p in ROOT.glob("exp_*.py"))
    probe = subprocess.run([sys.executable, "-c", f"import sys; [__import__(s) for s in {scripts!r}]; "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                            "('extras', 'shipped', 'released', 'reproduction', 'first_stage', 'local_collection', "
                            "'submitit', 'unpadded')))"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == "[]", probe.stdout


def test_the_core_is_nine_modules_and_the_readme_quotes_its_size():
    """What importing a script loads of the kit, as scripts/core_size.py prints it and the README quotes it."""
    result = subprocess.run([sys.executable, "scripts/core_size.py", "exp_rq1_objectives.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = [line.split()[0] for line in result.stdout.splitlines()[:-1]]
    assert not [name for name in loaded if name.startswith("extras")]
    assert sorted(name for name in loaded if name != "exp_rq1_objectives") == [
        "claims", "common", "cross_encoder", "grid", "losses", "paper_setup", "significance", "store", "tables"]
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- core size: scripts/core_size.py exp_rq1_objectives.py -->\n```\n", 1)[1]
    assert block.split("\n```", 1)[0].strip() == result.stdout.splitlines()[-1]


def test_losses_file_prints_every_objective_term_by_term():
    result = subprocess.run([sys.executable, str(ROOT / "losses.py")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    import losses
    for name in losses.LOSSES:
        by_hand = re.search(rf"by hand (\S+)   {name}\(\) (\S+)", result.stdout)
        assert by_hand, name
        assert abs(float(by_hand.group(1)) - float(by_hand.group(2))) < 1e-5, by_hand.group(0)
    assert "teacher rank r" in result.stdout and "s_0 − s_j" in result.stdout
