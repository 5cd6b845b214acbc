"""Example 2: the whole export pipeline from Python (what `autotimm-export` runs).

    python examples/02_export_api.py [OUT_DIR]
"""

import sys
import tempfile

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
manifest = export_model(demo_model_path("detector"), out, ExportOptions(decode="boxes", dynamic_hw=True))
for art in manifest["artifacts"]:
    print(f"{art['role']:<30} {art['file']}")
print("parity passed:", manifest["parity"]["passed"])
assert manifest["parity"]["passed"]
