"""Triton kernels of the fused head, installed as ``inpo.kernels`` (never a top-level ``kernels``).

The folder is still importable as a top-level ``kernels`` whenever the repository root is on ``sys.path``
(``python -m pytest``, ``python -m inpo`` or ``python -m bench.…`` run from here). transformers (>= 5.25 depends on it)
imports the unrelated hub package of that name; imported under that name, this file hands the import over to the
installed package, so the folder never shadows it. Without such a package it stays an empty module, which transformers
reads as "not installed".
"""

import sys

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _installed = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _installed
        _spec.loader.exec_module(_installed)
