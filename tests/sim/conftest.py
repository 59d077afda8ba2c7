"""Make ``import sim`` find this checkout's package.

An editable install made before ``sim/__init__.py`` existed maps ``sim`` to an empty namespace
package, and ``pytest`` does not put the repository root on ``sys.path``. Prepending the root fixes
both (spawned evaluation workers inherit ``sys.path``). Re-running ``pip install --no-deps -e .``
fixes the install itself.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
for _name in [m for m in sys.modules if m == "sim" or m.startswith("sim.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:  # a namespace stub imported too early
        del sys.modules[_name]

os.environ.setdefault("MUJOCO_GL", "osmesa")
