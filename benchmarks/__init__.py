"""dermabench's benchmarks: how much the harness costs beside the libraries it drives.

`python -m benchmarks` runs them all and writes `results/benchmarks.json` and
`results/benchmarks.md` (see `benchmarks/__main__.py`). The scripts beside it
(`dermaflux_quality.py`, `sampling_steps.py`, `report_screenshot.py`) are
separate studies, run one by one. Benchmarks are not tests: CI runs only the
seconds-long `--smoke` of the runner, to keep it working.
"""
