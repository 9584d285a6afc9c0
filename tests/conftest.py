"""Test setup: the repo on sys.path, a private ir_datasets home and kit cache, and the network blocked."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = Path(__file__).resolve().parent / "offline"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(OFFLINE))

# The user's ir_datasets home and the kit's cache, both fresh: the kit must install the shipped demo files
# itself, in its own cache (the demo's private ir_datasets home), and leave the user's home alone.
os.environ["IR_DATASETS_HOME"] = tempfile.mkdtemp(prefix="kit-user-ir-datasets-")
os.environ["KIT_CACHE"] = tempfile.mkdtemp(prefix="kit-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Subprocesses (the experiment scripts) inherit the same blocked network.
os.environ["PYTHONPATH"] = os.pathsep.join([str(OFFLINE), str(ROOT), os.environ.get("PYTHONPATH", "")])
import sitecustomize  # noqa: E402,F401  (blocks sockets in this process too)
import common  # noqa: E402

common.choose_ir_datasets_home(demo=True)  # the tests read the demo's collections in this process
