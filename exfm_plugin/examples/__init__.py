"""Runnable examples, shipped in the wheel so a pip install has them too:

    python -m exfm_plugin.examples.quickstart [WORK_DIR]           # the methods side by side
    python -m exfm_plugin.examples.student_in_fuxictr [WORK_DIR]   # the student in your FuxiCTR code
    python -m exfm_plugin.examples.run_expid --expid EXPID          # FuxiCTR's run_expid.py for ExFM expids

(``examples/*.py`` in a checkout run the same files.)
"""
