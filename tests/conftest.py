"""Test setup: the repo on sys.path, a private ir_datasets home, and the network blocked."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = Path(__file__).resolve().parent / "offline"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(OFFLINE))

# ir_datasets reads its home when imported: set it before anything imports it. A fresh folder proves
# that the kit installs the shipped demo files itself.
os.environ["IR_DATASETS_HOME"] = tempfile.mkdtemp(prefix="kit-ir-datasets-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Subprocesses (the experiment scripts) inherit the same blocked network.
os.environ["PYTHONPATH"] = os.pathsep.join([str(OFFLINE), str(ROOT), os.environ.get("PYTHONPATH", "")])
import sitecustomize  # noqa: E402,F401  (blocks sockets in this process too)
