"""Pointer: this example lives in the package, ``exfm_plugin/examples/run_expid.py``, so that a pip
install ships it too (``python -m exfm_plugin.examples.run_expid``). This file runs it from a checkout,
with the same arguments."""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout, not installed
runpy.run_module("exfm_plugin.examples.run_expid", run_name="__main__", alter_sys=True)
